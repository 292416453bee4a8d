"""Pods on one private network (SPEC §9, ``pod.network: cluster``): rented together,
ended together.

``pod-up`` first rents the whole network here (``rent``): RunPod, one instant cluster;
Vast, offers of one physical cluster, an overlay network created and every instance
joined (each provider's module says which documented API shapes it uses). The member
pods become the pool's pods in rank order (``p0`` is node rank 0), each with its own
session (carrying the network's id in ``cluster``) and its own ``rent`` line in the
ledger. Then every pod comes up as a session pod does (``lifecycle.pod_up``: readiness,
POD_READY, the watchdog). Offers are tried cheapest first, at most
``pod.max_offer_attempts``; one whose capacity went meanwhile is skipped; a create that
fails midway leaves nothing behind (``create_cluster`` destroys what it made). A network
just rented whose pods never become usable is ended as a whole (``abandon``) and the next
offer tried (``bring_up``).

``pod-down --destroy`` first checks every pod as for one pod (runs never fetched), then
ends the network at once (``take_down``): no pod of it is left billing, the ledger says
destroyed for each. Stopping is refused: RunPod's cluster pods cannot be stopped, and a
network half stopped is not one.

A network all of whose pods ended without podflow (their watchdogs) is deleted by the next
``pod-status`` (``tidy``). A member that is down is replaced alone where the provider lets a
pod join the network (``replace_member``; ``pool.replace``, ``sweep-recover --replace``):
Vast rents another ask of the overlay's physical cluster and joins it to the same overlay.
A RunPod instant cluster adds no pod: that is refused (exit 2) with what to do instead.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from workflow import pool
from workflow import session as sessions
from workflow.errors import PodflowError, ProviderError
from workflow.money import spend, watchdog
from workflow.providers import get_provider, lifecycle
from workflow.providers.base import Cluster, Offer, OfferUnavailable, PodGone, PodState, Provider
from workflow.providers.lifecycle import _request, _say, _spec_text
from workflow.providers.presets import offer_spec
from workflow.providers.readiness import PodNeverReady


def wanted(config) -> bool:
    """Whether this project's pods are to be on one private network."""
    return config.get("pod.network", None) == "cluster"


def _members(config) -> List[Tuple[pool.Pod, object]]:
    """(pod, the pod's config) for every pod of the pool."""
    return [(p, pool.pod_config(config, p)) for p in pool.pods(config)]


def known(config) -> Optional[Cluster]:
    """The network this project's sessions name (its pods in pool order), or None."""
    provider = config.get("pod.provider", "local")
    found = [sessions.load(cfg) for _, cfg in _members(config)]
    ids = [s.cluster for s in found if s is not None and s.provider == provider and s.cluster]
    if not ids:
        return None
    return Cluster(provider, ids[0], tuple(s.pod_id for s in found
                                          if s is not None and s.cluster == ids[0] and s.pod_id))


def _alive(provider: Provider, cluster: Cluster, count: int) -> bool:
    if len(cluster.pod_ids) < count:
        return False
    try:
        return not any(provider.get(pid).state.is_terminal() for pid in cluster.pod_ids)
    except PodGone:
        return False


def _matching(config) -> Tuple[List[Offer], int]:
    """(offers of the pool's pods on one network, cheapest first; how many the provider had):
    the filters apply to each pod (its price is the offer's share)."""
    spec, count = offer_spec(config), len(pool.pods(config))
    found = get_provider(config).search_cluster_offers(spec, count)
    return sorted((o for o in found if spec.matches(replace(o, price_per_hour=o.price_per_hour / count))[0]),
                  key=lambda o: (o.price_per_hour, o.id)), len(found)


def list_offers(config) -> Dict[str, Any]:
    """``offers`` with ``pod.network: cluster``: offers of the whole network."""
    return {"provider": config.pod.provider, "spec": offer_spec(config).as_dict(), "offers": _matching(config)[0]}


def bring_up(config, up_pods: Callable[[], List[pool.PodResult]]) -> List[pool.PodResult]:
    """``pod-up``: the network (``rent``), then ``up_pods()`` brings every pod up. A network
    just rented whose pods do not all become usable in time is ended, and the next offer
    tried, as a pod that never becomes usable is (at most ``pod.max_offer_attempts``).
    Returns ``up_pods``' results; raises their failures when the network was ended."""
    say = _say(config)
    tried: List[str] = []
    while True:
        network, offer = rent(config, skip=tried)
        results = up_pods()
        failed = [r for r in results if not r.ok]
        if offer is None or not failed:
            return results
        abandon(config, network, reason="never became usable")
        tried.append(offer.id)
        again = all(isinstance(r.error, PodNeverReady) for r in failed) and \
            len(tried) < max(1, int(config.pod.max_offer_attempts or 5))
        say(f"ended {network.provider} network {network.id}: not all of its pods became usable"
            + ("; trying the next offer" if again else ""))
        if not again:
            pool.raise_failures(results)


def rent(config, skip: Sequence[str] = ()) -> Tuple[Cluster, Optional[Offer]]:
    """The project's network: the one its sessions name while all its pods live, else a
    new one rented now from an offer not in ``skip``. Returns (cluster, the offer rented
    now, or None for the network the project had)."""
    watchdog.check(config)  # before anything is rented, as for one pod
    watchdog.check_budget(config)
    say = _say(config)
    provider = get_provider(config)
    members = _members(config)
    count = len(members)
    have = known(config)
    if have is not None:
        if _alive(provider, have, count):
            return have, None
        say(f"{provider.name} network {have.id} lost some of its pods; ending what is left of it")
        abandon(config, have, reason="some of its pods were gone")
    spec = offer_spec(config)
    offers, seen = _matching(config)
    offers = [o for o in offers if o.id not in skip]
    if not offers:
        raise ProviderError(provider.name, f"no offer of {count} pods on one private network matches "
                                           f"{_spec_text(spec)} ({seen} seen)",
                            hint="relax pod.offer (gpu, max_price_per_hour, regions...), or lower pod.count")
    request = _request(config)
    skipped: List[str] = []
    for offer in offers[:max(1, int(config.pod.max_offer_attempts or 5) - len(skip))]:
        say(f"renting {count} pods of {offer.gpu or 'cpu'} x{offer.num_gpus} on one private network "
            f"at ${offer.price_per_hour:.3f}/h in all (offer {offer.id})")
        try:
            cluster = provider.create_cluster(offer, request, count)
        except OfferUnavailable as exc:
            skipped.append(f"{offer.id}: {exc.reason}")
            say(f"  skipped offer {offer.id}: {exc.reason}")
            continue
        at = time.time()
        price = (cluster.price_per_hour or offer.price_per_hour) / count
        for (pod, cfg), pod_id in zip(members, cluster.pod_ids):
            _keep(cfg, provider, pod_id, f"{request.name} {pod.name}", price, offer, cluster.id, at)
        say(f"  rented {provider.name} network {cluster.id}: pods {', '.join(cluster.pod_ids)}")
        return cluster, offer
    raise ProviderError(provider.name, f"no private network of {count} pods could be rented "
                                       f"after {len(skipped)} offer(s) ({'; '.join(skipped)})",
                        hint="pod.max_offer_attempts and pod.offer control the search; try again later")


def _keep(cfg, provider: Provider, pod_id: str, label: str, price: float, offer: Offer, network: str,
          at: float) -> None:
    """A member just rented: its ``rent`` line in the ledger, its session naming the network."""
    spend.note(cfg, "rent", provider.name, pod_id, price=price, label=label, at=at)
    sessions.save(sessions.Session(
        provider=provider.name, pod_id=pod_id, name=label, created_at=at, created_by_podflow=True,
        price_per_hour=price, gpu=offer.gpu or None, cluster=network,
        ttl=str(cfg.pod.ttl) if cfg.pod.ttl not in (None, "") else None), cfg)


def check_growable(config) -> None:
    """``--replace`` on a network whose provider cannot add a pod to it: UnsupportedAction
    (exit 2) before anything is done, with what to do instead."""
    provider = get_provider(config)
    if wanted(config) and not provider.can_grow_cluster:
        raise provider.unsupported("replacing a pod of a private network", hint=provider.cannot_grow_cluster)


def replace_member(config, pod: pool.Pod, say) -> None:
    """A pod of the network that is down, replaced under its name (``pool.replace``,
    ``sweep-recover --replace``): the old member destroyed, a new one rented from an offer
    that can join the same network (Vast: an ask of the overlay's physical cluster, cheapest
    first, at most ``pod.max_offer_attempts``) and joined, then brought up as ``pod-up``
    does (must be called in the pod's ``runtime.on_pod``). A member that never becomes
    usable is destroyed and the next offer tried. ``config`` is the pool's. Raises
    UnsupportedAction (exit 2) where the provider's networks cannot take a pod (RunPod
    instant clusters), ProviderError (exit 4) when no offer can join: nothing this call
    rented is left billing."""
    check_growable(config)
    provider = get_provider(config)
    network = known(config)
    if network is None:
        raise ProviderError(provider.name, f"{pod.name}: this project knows no network to put a replacement on",
                            hint="'wf pod-up' rents the whole network")
    cfg = pool.pod_config(config, pod)
    old = sessions.load(cfg)
    if old is not None and old.pod_id:
        say(f"{pod.name}: destroying the down pod {old.pod_id} of network {network.id} and renting a replacement")
        lifecycle._destroy_quietly(provider, old.pod_id, say, cfg, reason="down: replaced")
    sessions.clear(cfg)
    spec = offer_spec(cfg)
    offers = provider.member_offers(network, spec)
    if not offers:
        raise ProviderError(provider.name, f"{pod.name}: no offer that can join network {network.id} is left "
                                           f"(wanted: {_spec_text(spec)})",
                            hint="its runs go to the pods that are up (pool.recover); relax pod.offer, or "
                                 "'wf pod-down --destroy' and 'wf pod-up' for a whole new network")
    request = _request(cfg)
    skipped: List[str] = []
    for offer in offers[:max(1, int(cfg.pod.max_offer_attempts or 5))]:
        say(f"{pod.name}: renting {offer.gpu or 'cpu'} x{offer.num_gpus} at ${offer.price_per_hour:.3f}/h "
            f"(offer {offer.id}) onto network {network.id}")
        try:
            member = provider.join_cluster(network, offer, request)
        except OfferUnavailable as exc:
            skipped.append(f"{offer.id}: {exc.reason}")
            say(f"  skipped offer {offer.id}: {exc.reason}")
            continue
        _keep(cfg, provider, member.id, f"{request.name} {pod.name}", member.price_per_hour or offer.price_per_hour,
              offer, network.id, time.time())
        try:
            lifecycle.pod_up(cfg)
        except BaseException as exc:
            lifecycle._destroy_quietly(provider, member.id, say, cfg)
            sessions.clear(cfg)
            if not isinstance(exc, PodNeverReady):
                raise
            skipped.append(f"{offer.id}: never usable")
            continue
        return
    raise ProviderError(provider.name, f"{pod.name}: no pod could join network {network.id} after "
                                       f"{len(skipped)} offer(s) ({'; '.join(skipped)})",
                        hint="its runs go to the pods that are up (pool.recover); try again later")


def tidy(config) -> Optional[Cluster]:
    """The project's network, ended here when every pod of it has ended without podflow
    (the pods' watchdogs: autostop, ``pod.ttl``, ``pod.max_cost_usd``; the provider): the
    network itself deleted (a Vast overlay outlives its instances, and the instance's own
    key that a watchdog uses cannot delete it), the ledger and sessions closed. Returns
    that network, or None (no network, or one with a pod still there)."""
    network = known(config) if wanted(config) else None
    if network is None:
        return None
    provider = get_provider(config)
    for pod_id in network.pod_ids:
        try:
            if provider.get(pod_id).state != PodState.TERMINATED:
                return None
        except PodGone:
            continue
        except PodflowError:
            return None  # the API cannot be read now: that says nothing of the pods
    abandon(config, network, reason="every pod of its network ended")
    return network


def abandon(config, cluster: Cluster, reason: Optional[str]) -> None:
    """End the network and every pod of it; the ledger and the sessions follow."""
    get_provider(config).destroy_cluster(cluster)
    for _, cfg in _members(config):
        s = sessions.load(cfg)
        if s is not None and s.cluster == cluster.id:
            spend.note(cfg, "destroy", cluster.provider, s.pod_id, reason=reason)
            sessions.clear(cfg)


def take_down(config, *, forced: bool = False) -> Optional[Cluster]:
    """``pod-down --destroy`` once every pod passed its checks: end the whole network."""
    cluster = known(config)
    if cluster is not None:
        abandon(config, cluster, "forced" if forced else None)
    return cluster
