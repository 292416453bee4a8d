"""Price and spend for ``pod-status``, ``sweep-status`` and ``wf cost`` (SPEC §10).

The price of a cloud pod is the provider's, for the live pod (Vast ``dph_total``,
RunPod ``cost``, Lium the executor's price); an ssh host or this machine costs what
``pod.price_per_hour`` says (None: unknown). Spend comes from the ledger's running
intervals, so a stop, a restart or a destroy outside podflow is counted right.

``observe`` reconciles the ledger with what the provider says now: a pod the ledger
thinks alive but the provider no longer has (or calls terminated) is closed as
``gone``; a pod the provider stopped (the watchdog on the pod, the console) is
``stop``ped; a live pod the ledger never saw (``pod.target``) is ``adopt``ed. The
provider is asked by the commands about pods (``pod-up``, ``pod-status``, ``pod-down``,
``cost``), and by any other command that could not reach its pod
(``notice_unreachable``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from workflow.money import ledger
from workflow.money.ledger import PodKey

#: API key variable of each cloud provider: a provider is asked only when its key is set.
API_KEYS = {"vastai": "VAST_API_KEY", "runpod": "RUNPOD_API_KEY", "lium": "LIUM_API_KEY"}


def pod_name(config) -> str:
    """The pod's name in the pool (``p0`` unless a pool config says otherwise)."""
    return str(getattr(config, "pod_name", None) or "p0")


def key_for(config, provider: str, pod_id: str) -> PodKey:
    return PodKey(provider, str(pod_id), pod_name(config))


def owned_price(config) -> Optional[float]:
    """``pod.price_per_hour`` (ssh and local pods)."""
    value = config.get("pod.price_per_hour", None)
    return None if value is None else float(value)


def note(config, event: str, provider: str, pod_id: str, *, price: Optional[float] = None,
         label: Optional[str] = None, at: Optional[float] = None, reason: Optional[str] = None) -> bool:
    """Record a lifecycle event of this config's pod in the ledger."""
    return ledger.record(config, event, key_for(config, provider, pod_id), price_per_hour=price,
                         label=label or None, at=at, reason=reason)


def observe(config, provider: str, pod_id: str, info=None, *, gone: bool = False) -> None:
    """Bring the ledger in line with the provider's view of this config's pod (``info``:
    a ``PodInfo``, or None with ``gone`` when the provider does not know it)."""
    observe_key(config, key_for(config, provider, pod_id), info, gone=gone)


def observe_key(config, key: PodKey, info=None, *, gone: bool = False) -> None:
    """``observe`` for any pod the ledger knows (another pool slot's too)."""
    from workflow.providers.base import PodState

    known = ledger.pod(config, key)
    alive = known is not None and known.alive
    if gone or (info is not None and info.state == PodState.TERMINATED):
        if alive:
            ledger.record(config, "gone", key, reason="the provider no longer has it")
        return
    if info is None:
        return
    price = info.price_per_hour if info.price_per_hour else None
    if info.state in (PodState.RUNNING, PodState.STARTING, PodState.PENDING):
        if not alive:
            ledger.record(config, "adopt", key, price_per_hour=price, label=info.name,
                          at=info.started_at or info.created_at)
        elif known.state == "stopped":
            ledger.record(config, "start", key, price_per_hour=price, reason="the provider says it runs")
    elif info.state == PodState.STOPPED:
        if not alive:
            ledger.record(config, "adopt", key, price_per_hour=price, label=info.name)
        ledger.record(config, "stop", key, reason="the provider says it is stopped")


def figures(config, provider: str, pod_id: str, *, live_price: Optional[float] = None,
            started_at: Optional[float] = None, now: Optional[float] = None) -> Dict[str, Any]:
    """``price_per_hour``, ``uptime_secs`` (of the current running interval) and
    ``spent_usd`` (every running interval so far) of one pod."""
    now = time.time() if now is None else now
    key = key_for(config, provider, pod_id)
    live = {key: live_price} if live_price else None
    ps = next((p for p in ledger.fold(ledger.entries(config), now, live) if p.key == key), None)
    if ps is None:
        return {"price_per_hour": live_price, "uptime_secs": None, "spent_usd": None}
    since = started_at if started_at and ps.running_since is not None else ps.running_since
    return {"price_per_hour": ps.price_per_hour,
            "uptime_secs": round(now - since, 1) if since is not None else 0.0,
            "spent_usd": None if ps.spent_usd is None else round(ps.spent_usd, 6)}


def owned_id(config) -> str:
    """The ledger id of an ssh host or this machine."""
    return "local" if config.pod.provider == "local" else str(config.pod.host)


def current_key(config) -> Optional[PodKey]:
    """The ledger key of this config's pod, when there is one (no API call)."""
    from workflow import session as sessions
    from workflow.providers import CLOUD

    provider = config.pod.provider
    if provider not in CLOUD:
        return key_for(config, provider, owned_id(config))
    s = sessions.load(config)
    if s is not None and s.provider == provider and s.pod_id:
        return key_for(config, provider, s.pod_id)
    return None


def notice_unreachable(config) -> Optional[str]:
    """This config's cloud pod could not be reached: ask its provider (when its API key
    is set) whether it is still there, and bring the ledger in line: a pod the provider
    no longer has (or calls terminated) is closed as ``gone``, a stopped one ``stop``ped.
    So any command that reaches for the pod notices a pod ended outside podflow. Returns
    what the provider said, for the error's hint (None: nothing to say)."""
    from workflow import session as sessions
    from workflow.errors import PodflowError
    from workflow.providers import get_provider
    from workflow.providers.base import PodGone, PodState

    provider = config.pod.provider
    if provider not in API_KEYS or not config.secret(API_KEYS[provider]):
        return None
    s = sessions.load(config)
    if s is None or s.provider != provider or not s.pod_id:
        return None
    try:
        info = get_provider(config).get(s.pod_id)
    except PodGone:
        info = None
    except PodflowError:
        return None  # the provider cannot be asked either: nothing learnt
    observe(config, provider, s.pod_id, info, gone=info is None)
    if info is None or info.state == PodState.TERMINATED:
        return (f"the {provider} API says pod {s.pod_id} is gone (ended outside podflow?); the ledger closes it "
                "('wf cost'); 'wf pod-up' rents a new one")
    if info.state == PodState.STOPPED:
        return f"the {provider} API says pod {s.pod_id} is {info.raw_state or 'stopped'}; 'wf pod-up' starts it again"
    return None


# ---------------------------------------------------------------- wf cost


def _provider_for(config, name: str):
    from workflow.providers import get_provider, provider_class

    return get_provider(config) if name == config.pod.provider else provider_class(name)(config)


def reconcile(config) -> List[str]:
    """Ask each provider whose API key is set about every pod the ledger thinks alive;
    close the ones it no longer has. Returns what it could not check (provider names)."""
    from workflow.errors import PodflowError
    from workflow.providers.base import PodGone

    unchecked: List[str] = []
    for ps in ledger.open_pods(config):
        provider = ps.key.provider
        if provider not in API_KEYS:
            continue
        if not os.environ.get(API_KEYS[provider]):
            unchecked.append(provider)
            continue
        prov = _provider_for(config, provider)
        try:
            info = prov.get(ps.key.id)
        except PodGone:
            ledger.record(config, "gone", ps.key, reason="the provider no longer has it")
            continue
        except PodflowError:
            unchecked.append(provider)
            continue
        observe_key(config, ps.key, info)
    return sorted(set(unchecked))


def cost_report(config, *, check: bool = True) -> Dict[str, Any]:
    """``wf cost --json``: every pod this project has had, alive or gone, and the total."""
    unchecked = reconcile(config) if check else []
    live: Dict[PodKey, float] = {}
    if config.pod.provider not in API_KEYS:
        price = owned_price(config)
        if price is not None:
            live[key_for(config, config.pod.provider, owned_id(config))] = price
    spends = ledger.fold(ledger.entries(config), None, live)
    total, complete = ledger.totals(spends)
    return {"pods": [s.as_dict() for s in spends], "total_usd": total, "complete": complete,
            "unchecked_providers": unchecked, "ledger": str(ledger.path_for(config))}


# ---------------------------------------------------------------- sweep-status


def sweep_cost(config, status, now: Optional[float] = None) -> Dict[str, Any]:
    """The sweep's spend so far (the pod's price times the time since its first run
    started) and an estimate to finish (the same pace for the runs not done yet)."""
    from workflow.agent.fsutil import parse_time

    now = time.time() if now is None else now
    key = current_key(config)
    ps = None
    if key is not None:
        ps = next((p for p in ledger.fold(ledger.entries(config), now) if p.key == key), None)
    price = ps.price_per_hour if ps is not None else None
    if price is None and config.pod.provider not in API_KEYS:
        price = owned_price(config)
    starts = [parse_time(r.started_at).timestamp() for r in status.runs if r.started_at]
    ends = [parse_time(r.finished_at).timestamp() for r in status.runs if r.finished_at]
    done = sum(1 for r in status.runs if r.state in ("success", "failed", "timed_out", "cancelled", "lost"))
    left = len(status.runs) - done
    start = min(starts) if starts else None
    end = now if status.active or not ends else max(ends)
    elapsed = max(0.0, end - start) if start is not None else 0.0
    eta = elapsed * left / done if done and left and status.active else (0.0 if not left else None)
    money = (lambda secs: None if price is None or secs is None else round(price * secs / 3600.0, 6))
    return {"price_per_hour": price, "elapsed_secs": round(elapsed, 1), "spent_usd": money(elapsed),
            "eta_secs": None if eta is None else round(eta, 1), "estimate_to_finish_usd": money(eta)}
