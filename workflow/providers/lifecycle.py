"""``offers``, ``pod-up``, ``pod-status``, ``pod-down``: the provider contract put to work.

Library code (the CLI tasks in ``cli/provider_tasks.py`` only call these and print).
``pod-up`` rents the cheapest matching offer, moving on when one was taken meanwhile
or never became usable (destroying only pods this attempt created), waits through the
readiness stages, writes ``.podflow/session.json``, and only then moves the state
machine (which lives on the pod) from INIT to POD_READY.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Set

from workflow import runtime
from workflow import session as sessions
from workflow.errors import ConnectionFailed, ExitCode, InputError, PodflowError, ProviderError, UnsupportedAction
from workflow.money import spend, watchdog
from workflow.providers import CLOUD, cuda_policy, get_provider
from workflow.providers.base import CreateRequest, Offer, OfferUnavailable, PodGone, PodInfo, PodState, Provider
from workflow.providers.presets import offer_spec
from workflow.providers.readiness import PodNeverReady, local_gpus, wait_usable

Say = Callable[[str], None]


def _say(config) -> Say:
    quiet = str(config.get("progress", "milestones")) == "quiet"
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def parse_ttl(value: Any) -> Optional[float]:
    """``pod.ttl`` in seconds: a number of seconds, or ``90m`` / ``8h`` / ``2d`` / ``3600s``."""
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value).lower())
    if not m:
        raise InputError(f"pod.ttl: {value!r} is not a duration (e.g. 90m, 8h, 2d, or seconds)")
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _public_key(config) -> Optional[str]:
    import os

    idf = config.pod.identity_file
    if not idf:
        return None
    pub = os.path.expanduser(str(idf)) + ".pub"
    try:
        with open(pub) as fh:
            line = fh.read().strip()
    except OSError:
        return None
    return line or None


def _request(config) -> CreateRequest:
    ttl = parse_ttl(config.pod.ttl)
    return CreateRequest(
        name=f"{config.project}-{secrets.token_hex(3)}",
        image=config.pod.image or None,
        template_id=config.pod.template_id or None,
        disk_gb=int(config.pod.disk_gb or 50),
        volume=config.pod.volume,
        public_key=_public_key(config),
        ssh_user=config.pod.user or None,
        ttl_hours=(ttl / 3600.0) if ttl else None,
    )


# ---------------------------------------------------------------- offers


def list_offers(config) -> Dict[str, Any]:
    """Matching offers, cheapest first (``offers``); of the whole network with ``pod.network: cluster``."""
    if config.get("pod.network", None) == "cluster":
        from workflow.providers import clusters

        return clusters.list_offers(config)
    provider = get_provider(config)
    spec = offer_spec(config)
    found = provider.search_offers(spec)
    offers = sorted((o for o in found if spec.matches(o)[0]), key=lambda o: (o.price_per_hour, o.id))
    return {"provider": provider.name, "spec": spec.as_dict(), "offers": offers}


# ---------------------------------------------------------------- pod-up


@dataclass
class PodUpResult:
    provider: str
    pod: Optional[PodInfo]
    endpoint: Optional[str]
    offer: Optional[Offer] = None
    rented: bool = False
    skipped: List[Dict[str, str]] = field(default_factory=list)
    stages: List[Any] = field(default_factory=list)
    state: Optional[str] = None
    seconds: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {
            "provider": self.provider, "pod": self.pod.as_dict() if self.pod else None, "endpoint": self.endpoint,
            "offer": self.offer.as_dict() if self.offer else None, "rented": self.rented, "skipped": self.skipped,
            "stages": [{"stage": s, "secs": t} for s, t in self.stages], "state": self.state,
            "seconds": round(self.seconds, 3),
        }


def _wait(provider: Provider, config, pod_id: str, say: Say, first: Optional[PodInfo] = None):
    return wait_usable(
        provider, pod_id,
        timeout=float(config.pod.ready_timeout_secs or 600),
        cuda=cuda_policy(config),
        booting=provider.name in CLOUD,
        identity_file=config.pod.identity_file,
        password=config.secret("REMOTE_SSH_PASSWORD"),
        connect_timeout=float(config.pod.connect_timeout_secs or 20),
        progress=lambda m: say(f"  {m}"),
        first=first,
    )


def _advance_fsm(say: Say) -> str:
    fsm = runtime.fsm()
    seen = fsm.check("pod-up")
    doc = fsm.advance("pod-up", seen)
    return doc.get("state", "POD_READY")


def _autostop_status(config) -> Optional[Dict[str, Any]]:
    """What the watchdog on the pod will do, when (None when none was asked for)."""
    if not (watchdog.configured(config) or watchdog.marker_path(config).exists()):
        return None
    try:
        return watchdog.describe(runtime.agent())
    except PodflowError as exc:
        return {"running": None, "error": exc.message}


def start_watchdog(config, say: Optional[Say] = None) -> None:
    """(Re)start the watchdog on the pod (autostop, pod.ttl, pod.max_cost_usd; SPEC §10)."""
    say = say or _say(config)
    started = watchdog.launch_current(config, runtime.agent())
    if started:
        say(f"watchdog on the pod: pid {started.get('pid')} (autostop.action {config.get('autostop.action', 'stop')})")


def _save_session(config, provider: Provider, pod: PodInfo, endpoint, *, rented: bool,
                  created_at: Optional[float] = None) -> sessions.Session:
    previous = sessions.load(config)
    keep_fetched = previous.fetched if previous and previous.pod_id == pod.id else {}
    return sessions.save(sessions.Session(
        provider=provider.name, pod_id=pod.id, name=pod.name or None,
        host=endpoint.host, port=endpoint.port, user=endpoint.user,
        created_at=created_at or (previous.created_at if previous and previous.pod_id == pod.id else None)
        or pod.created_at or time.time(),
        created_by_podflow=rented or bool(previous and previous.pod_id == pod.id and previous.created_by_podflow),
        price_per_hour=pod.price_per_hour, gpu=pod.gpu or None,
        ttl=str(config.pod.ttl) if config.pod.ttl not in (None, "") else None,
        fetched=keep_fetched, cluster=previous.cluster if previous and previous.pod_id == pod.id else None,
    ), config)


def pod_up(config, *, with_watchdog: bool = True) -> PodUpResult:
    """Rent (or reuse) a pod, wait until an SSH command runs on it, then POD_READY, then
    start its watchdog (``with_watchdog``; a pool starts them once every pod is up, so
    that each knows the whole pool's price)."""
    say = _say(config)
    t0 = time.monotonic()
    watchdog.check(config)
    watchdog.check_budget(config)
    provider = get_provider(config)
    if provider.name not in CLOUD:
        return _pod_up_owned(config, provider, say, t0, with_watchdog)

    # a pod this project already has (session), or pod.target
    existing = _existing_pod(config, provider, say)
    if existing is not None:
        pod, rented = existing
        spend.observe(config, provider.name, pod.id, pod)
        if pod.state == PodState.STOPPED:
            say(f"starting stopped {provider.name} pod {pod.id}")
            provider.start(pod.id)
            spend.note(config, "start", provider.name, pod.id, price=pod.price_per_hour or None)
            pod = None
        else:
            say(f"using {provider.name} pod {pod.id} ({pod.raw_state or pod.state.value})")
        pod_id = existing[0].id
        ready = _wait(provider, config, pod_id, say, first=pod)
        spend.observe(config, provider.name, pod_id, ready.pod)
        _save_session(config, provider, ready.pod, ready.endpoint, rented=rented)
        state = _advance_fsm(say)
        if with_watchdog:
            start_watchdog(config, say)
        return PodUpResult(provider.name, ready.pod, str(ready.endpoint), rented=rented, stages=ready.stages,
                           state=state, seconds=time.monotonic() - t0)

    if config.get("pod.network", None) == "cluster":  # rented together by clusters.rent, never one by one
        raise ProviderError(provider.name, "this pod of the private network (pod.network: cluster) is not rented",
                            hint="run 'wf pod-up' without --pod: the network's pods are rented together")
    spec = offer_spec(config)
    found = provider.search_offers(spec)
    offers = sorted((o for o in found if spec.matches(o)[0]), key=lambda o: (o.price_per_hour, o.id))
    if not offers:
        raise ProviderError(provider.name, f"no offer matches {_spec_text(spec)} ({len(found)} offers seen)",
                            hint="relax pod.offer (gpu, max_price_per_hour, regions...) or try another preset")
    attempts = max(1, int(config.pod.max_offer_attempts or 5))
    request = _request(config)
    if request.public_key is None:
        say(f"warning: no public key at {config.pod.identity_file}.pub; the pod may refuse SSH logins "
            "(run 'wf setup-keys')")
    skipped: List[Dict[str, str]] = []
    for offer in offers[:attempts]:
        say(f"renting {offer.gpu or 'cpu'} x{offer.num_gpus} at ${offer.price_per_hour:.3f}/h (offer {offer.id})")
        try:
            pod = provider.create(offer, request)
        except OfferUnavailable as exc:
            skipped.append({"offer": offer.id, "reason": exc.reason})
            say(f"  skipped offer {offer.id}: {exc.reason}")
            continue
        created_at = time.time()
        spend.note(config, "rent", provider.name, pod.id, price=pod.price_per_hour or offer.price_per_hour,
                   label=pod.name or request.name, at=created_at)
        say(f"  rented {provider.name} pod {pod.id}; waiting until it is usable")
        try:
            ready = _wait(provider, config, pod.id, say, first=pod)
        except PodNeverReady as exc:
            skipped.append({"offer": offer.id, "pod": pod.id, "reason": f"never usable: {exc.message}"})
            say(f"  pod {pod.id} never became usable ({exc.message}); destroying it")
            _destroy_quietly(provider, pod.id, say, config)
            continue
        except BaseException:
            say(f"  interrupted; destroying pod {pod.id} that this attempt created")
            _destroy_quietly(provider, pod.id, say, config)
            raise
        _save_session(config, provider, ready.pod, ready.endpoint, rented=True, created_at=created_at)
        state = _advance_fsm(say)
        if with_watchdog:
            start_watchdog(config, say)
        return PodUpResult(provider.name, ready.pod, str(ready.endpoint), offer=offer, rented=True,
                           skipped=skipped, stages=ready.stages, state=state, seconds=time.monotonic() - t0)
    reasons = "; ".join(f"{s['offer']}: {s['reason']}" for s in skipped)
    raise ProviderError(provider.name, f"no pod came up after {len(skipped)} offer(s) ({reasons})",
                        hint="pod.max_offer_attempts, pod.ready_timeout_secs and pod.offer control the search")


def _spec_text(spec) -> str:
    parts = [f"{k}={v}" for k, v in spec.as_dict().items() if v not in (None, [], (), True, False)]
    return " ".join(parts) or "any offer"


def _destroy_quietly(provider: Provider, pod_id: str, say: Say, config=None,
                     reason: str = "never became usable") -> None:
    try:
        provider.destroy(pod_id)
    except PodflowError as exc:
        say(f"  warning: could not destroy pod {pod_id}: {exc}; remove it in the {provider.name} console")
        return
    if config is not None:
        spend.note(config, "destroy", provider.name, pod_id, reason=reason)


def _existing_pod(config, provider: Provider, say: Say):
    """(pod, rented_by_podflow) for the session's pod or ``pod.target``; None to rent."""
    s = sessions.load(config)
    if s is not None and s.provider == provider.name and s.pod_id:
        if not config.pod.target or config.pod.target in (s.pod_id, s.name):
            try:
                pod = provider.get(s.pod_id)
                if not pod.state.is_terminal():
                    return pod, s.created_by_podflow
            except PodGone:
                pass
            spend.observe(config, provider.name, s.pod_id, gone=True)
            say(f"the session's {provider.name} pod {s.pod_id} is gone; forgetting it")
            sessions.clear(config)
    if config.pod.target:
        return provider.find(str(config.pod.target)), False
    return None


def _pod_up_owned(config, provider: Provider, say: Say, t0: float, with_watchdog: bool) -> PodUpResult:
    """local / ssh: nothing to rent; the machine must be usable, then INIT -> POD_READY."""
    if provider.name == "ssh":
        pod = provider.get("")
        ready = _wait(provider, config, pod.id, say, first=pod)
        pod, endpoint, stages = ready.pod, str(ready.endpoint), ready.stages
    else:
        if provider.bring_up():
            say("this local pod was down: up again")
        local_gpus(cuda_policy(config))
        pod, endpoint, stages = provider.get("local"), "local", []
    spend.note(config, "adopt", provider.name, spend.owned_id(config), price=spend.owned_price(config), label=pod.name)
    state = _advance_fsm(say)
    if with_watchdog:
        start_watchdog(config, say)
    return PodUpResult(provider.name, pod, endpoint, stages=stages, state=state, seconds=time.monotonic() - t0)


# ---------------------------------------------------------------- pod-status


def _fsm_status() -> Dict[str, Any]:
    return runtime.fsm().status()


def pod_status(config) -> Dict[str, Any]:
    """Provider state, endpoint, uptime, price and cost so far, FSM state, ttl."""
    provider = get_provider(config)
    doc: Dict[str, Any] = {"provider": provider.name, "pod": None, "fsm_state": None}
    s = sessions.load(config)
    if provider.name not in CLOUD:
        pod = provider.get("")
        doc["pod"] = pod.as_dict()
        doc["endpoint"] = str(pod.endpoint) if pod.endpoint else "local"
        if pod.state != PodState.RUNNING:  # a local pool pod taken down: its provider's word
            doc["error"] = f"this local pod is {pod.raw_state} (wf pod-down); wf pod-up brings it back"
            return doc
        st = _fsm_status()  # raises ConnectionFailed when the host is unreachable
        if not st.get("exists"):
            # SPEC §4: a reachable ssh/local pod with no state file is adopted: INIT -> POD_READY
            fsm = runtime.fsm()
            seen = fsm.check("pod-up")
            fsm.advance("pod-up", seen)
            st = _fsm_status()
            doc["adopted"] = True
        doc["fsm_state"] = st.get("state")
        doc["fsm_updated_at"] = st.get("updated_at")
        doc["stop_or_destroy"] = provider.stop_unsupported_reason(pod)
        spend.note(config, "adopt", provider.name, spend.owned_id(config), price=spend.owned_price(config),
                   label=pod.name)
        doc.update(spend.figures(config, provider.name, spend.owned_id(config), live_price=spend.owned_price(config)))
        doc["autostop"] = _autostop_status(config)
        return doc

    pod_id = s.pod_id if s is not None and s.provider == provider.name else None
    pod: Optional[PodInfo] = None
    try:
        if pod_id:
            pod = provider.get(pod_id)
        elif config.pod.target:
            pod = provider.find(str(config.pod.target))
    except PodGone:
        doc["error"] = f"{provider.name} pod {pod_id} no longer exists"
        spend.observe(config, provider.name, pod_id, gone=True)
    if pod is None:
        doc["session"] = s.to_dict() if s else None
        return doc
    if s and s.pod_id == pod.id and s.cluster and not pod.cluster_id:  # a Vast overlay: the API names none
        pod = replace(pod, cluster_id=s.cluster)
    now = time.time()
    created = (s.created_at if s and s.pod_id == pod.id else None) or pod.created_at
    spend.observe(config, provider.name, pod.id, pod)
    money = spend.figures(config, provider.name, pod.id, live_price=pod.price_per_hour or None,
                          started_at=pod.started_at, now=now)
    doc["pod"] = pod.as_dict()
    used = s.endpoint() if s and s.pod_id == pod.id and s.host else None
    same = [e for e in pod.endpoints if used is not None and (e.host, e.port) == (used.host, used.port)]
    doc["endpoint"] = str(same[0]) if same else (str(pod.endpoint) if pod.endpoint else (str(used) if used else None))
    doc["created_at"] = created
    doc.update(money)
    doc["cost_so_far"] = money["spent_usd"]  # the name before SPEC §10
    ttl_raw = (s.ttl if s and s.ttl else None) or (config.pod.ttl if config.pod.ttl not in (None, "") else None)
    doc["ttl"] = str(ttl_raw) if ttl_raw is not None else None
    ttl = parse_ttl(ttl_raw) if ttl_raw is not None else None
    doc["expires_at"] = (created + ttl) if ttl and created else None
    doc["ttl_left_secs"] = round(created + ttl - now, 1) if ttl and created else None
    doc["rented_by_podflow"] = bool(s and s.pod_id == pod.id and s.created_by_podflow)
    doc["fetched_runs"] = sorted(s.fetched) if s and s.pod_id == pod.id else []
    doc["stop_or_destroy"] = provider.stop_unsupported_reason(pod)
    if pod.state == PodState.RUNNING and pod.endpoints:
        try:
            st = _fsm_status()
            doc["fsm_state"] = st.get("state")
            doc["fsm_updated_at"] = st.get("updated_at")
            doc["autostop"] = _autostop_status(config)
        except PodflowError as exc:
            doc["fsm_state"] = None
            doc["fsm_error"] = exc.message
    return doc


# ---------------------------------------------------------------- pod-down


_LIST_RUNS = (
    'p="$1"; case "$p" in "~/"*) p="$HOME/${p#\\~/}";; "~") p="$HOME";; esac; '
    'echo "<<<PODFLOW-RUNS>>>"; '
    'if cd -- "$p" 2>/dev/null; then for d in */; do d="${d%/}"; '
    'case "$d" in _*|"*") continue;; esac; '
    'if [ -f "$d/status.json" ] || [ -f "$d/summary.json" ]; then printf "%s\\n" "$d"; fi; done; fi; '
    'echo "<<<PODFLOW-RUNS-END>>>"'
)


def runs_on_pod(config) -> Set[str]:
    """Run directories under ``remote.outputs_dir`` on the pod, read in one exec."""
    res = runtime.transport().run(["sh", "-c", _LIST_RUNS, "podflow", str(config.remote.outputs_dir)], timeout=60)
    out = res.stdout
    start, end = out.rfind("<<<PODFLOW-RUNS>>>"), out.rfind("<<<PODFLOW-RUNS-END>>>")
    if res.exit_code != 0 or start < 0 or end < start:
        raise ConnectionFailed(f"could not list runs on the pod (exit {res.exit_code}): {(res.stdout + res.stderr)[-300:]}")
    return {ln.strip() for ln in out[start + len("<<<PODFLOW-RUNS>>>"):end].splitlines() if ln.strip()}


class UnfetchedRuns(PodflowError):
    """Destroying the pod would lose runs that were never fetched."""

    exit_code = ExitCode.REFUSED


def pod_down(config, *, destroy: bool = False, force: bool = False, together: bool = False) -> Dict[str, Any]:
    """Stop the pod (where the provider can), or ``destroy`` it (refusing while runs exist
    that were never fetched, unless ``force``). ``together``: only the checks before a
    destroy; the pod ends with its private network (``clusters.take_down``)."""
    say = _say(config)
    provider = get_provider(config)
    if provider.name == "local" and provider.stop_unsupported_reason(None) is None:
        return _local_pod_down(provider, destroy)
    if provider.name not in CLOUD:
        raise UnsupportedAction(provider.name, "destroy" if destroy else "stop",
                                hint=provider.stop_unsupported_reason(None))
    s = sessions.load(config)
    pod: Optional[PodInfo] = None
    pod_id = s.pod_id if s is not None and s.provider == provider.name else None
    try:
        if pod_id:
            pod = provider.get(pod_id)
        elif config.pod.target:
            pod = provider.find(str(config.pod.target))
            pod_id = pod.id
    except PodGone:
        pod = None
    if pod_id is None:
        if together:  # a member of the network already ended alone (a replacement that failed)
            return {"provider": provider.name, "pod_id": None, "action": "none",
                    "message": f"no {provider.name} pod (it already ended)"}
        raise ConnectionFailed(f"no {provider.name} pod known for this project", hint="nothing to take down")
    if pod is None or pod.state == PodState.TERMINATED:
        spend.observe(config, provider.name, pod_id, gone=True)
        if together:  # the session still names the network that take_down ends
            return {"provider": provider.name, "pod_id": pod_id, "action": "destroy", "forced": force,
                    "cluster": s.cluster if s else None}
        sessions.clear(config)
        return {"provider": provider.name, "pod_id": pod_id, "action": "none", "message": f"pod {pod_id} is already gone"}

    if not destroy:
        reason = provider.stop_unsupported_reason(pod)
        if reason:
            raise UnsupportedAction(provider.name, "stop", hint=f"{reason}; 'wf pod-down --destroy' removes it")
        provider.stop(pod.id)
        spend.note(config, "stop", provider.name, pod.id)
        return {"provider": provider.name, "pod_id": pod.id, "action": "stop",
                "message": "disk kept; storage is still billed; 'wf pod-up' starts it again"}

    unfetched: List[str] = []
    reachable = pod.state == PodState.RUNNING and bool(pod.endpoints)
    if not force:
        if not reachable:
            raise ConnectionFailed(
                f"{provider.name} pod {pod.id} is {pod.raw_state or pod.state.value}: cannot check it for unfetched runs",
                hint="start it ('wf pod-up') and fetch the runs, or 'wf pod-down --destroy --force' to lose them")
        fetched = set(s.fetched) if s and s.pod_id == pod.id else set()
        unfetched = sorted(runs_on_pod(config) - fetched)
        if unfetched:
            raise UnfetchedRuns(
                f"refusing to destroy {provider.name} pod {pod.id}: {len(unfetched)} run(s) never fetched: "
                + ", ".join(unfetched),
                hint="'wf fetch-all' first, or 'wf pod-down --destroy --force' to lose them")
    if together:
        return {"provider": provider.name, "pod_id": pod.id, "action": "destroy", "forced": force,
                "cluster": s.cluster if s else None}
    if reachable:
        try:
            fsm = runtime.fsm()
            fsm.advance("pod-down", fsm.check("pod-down"))
        except PodflowError as exc:
            say(f"warning: state not reset on the pod ({exc.message})")
    provider.destroy(pod.id)
    spend.note(config, "destroy", provider.name, pod.id, reason="forced" if force else None)
    sessions.clear(config)
    return {"provider": provider.name, "pod_id": pod.id, "action": "destroy", "forced": force}


def _local_pod_down(provider, destroy: bool) -> Dict[str, Any]:
    """A local pool pod goes down as a machine dies: every process ended at once, no end
    state written; ``destroy`` also sets its state machine to INIT (SPEC §4). Its files
    stay on this machine; ``pod-up`` brings it back."""
    if provider.get("").state != PodState.RUNNING:
        return {"provider": "local", "pod_id": "local", "action": "none",
                "message": f"this local pod is already {provider.get('').raw_state} (wf pod-up brings it back)"}
    ended = provider.end_processes()
    if destroy:
        fsm = runtime.fsm()
        fsm.advance("pod-down", fsm.check("pod-down"))
    provider.mark_down("terminated" if destroy else "stopped")
    return {"provider": "local", "pod_id": "local", "action": "destroy" if destroy else "stop", "ended": ended,
            "message": f"{ended} process(es) ended; its files stay on this machine; 'wf pod-up' brings it back"}
