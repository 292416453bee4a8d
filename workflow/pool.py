"""Pools (SPEC §8): the pods of this project, named p0, p1, ..., and the one helper that
runs the same work on several of them at once.

The pool comes from the config: ``pod.hosts`` (provider ``ssh``: one pod per entry) or
``pod.count`` (every other provider; ``local`` makes that many pods on this machine,
each with its own directories). ``pod_config`` gives each pod its own view of the
config; ``select`` honours ``--pod NAME|INDEX``.

A pool of one pod is no special case: every command that reaches a pod runs through
``fan_out``. With one pod the work runs in the calling thread (Ctrl-C and tracebacks as
before) and ``raise_failures`` raises its error unchanged, so a one-pod project behaves
exactly as before pools. With several pods each pod's work runs in its own thread
(SkyPilot's ``run_in_parallel``); results come back in pod order, and a pod's failure is
kept under its name while the others go on, to be reported together (``PodsFailed``).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from workflow.errors import ConfigError, ConnectionFailed, InputError, PodflowError


@dataclass(frozen=True)
class Pod:
    """One pod of the pool, as the config names it."""

    name: str
    """``p0``, ``p1``, ... in config order."""
    index: int
    host: Optional[str] = None
    """``pod.hosts`` entry's host (``user@host:port``, a host, or an ``~/.ssh/config`` alias)."""
    port: Optional[int] = None
    user: Optional[str] = None
    identity_file: Optional[str] = None
    addr: Optional[str] = None
    """The address other pods reach this one on (multi-node runs), when given."""


def _from_host(index: int, entry: Any) -> Pod:
    name = f"p{index}"
    if isinstance(entry, str):
        return Pod(name, index, host=entry)
    return Pod(name, index, host=str(entry["host"]), port=entry.get("port"), user=entry.get("user"),
               identity_file=entry.get("identity_file"), addr=entry.get("addr"))


def pods(config) -> Tuple[Pod, ...]:
    """Every pod of the pool, in order; ConfigError (exit 2) for a pool that cannot be."""
    hosts = list(config.get("pod.hosts", None) or [])
    count = int(config.get("pod.count", 1) or 1)
    provider = config.get("pod.provider", "local")
    count_set = (config.sources or {}).get("pod.count", "default") != "default"
    if config.get("pod.network", None) == "cluster":
        _check_network(provider, count, bool(config.get("pool.replace", False)))
    if hosts:
        if provider != "ssh":
            raise ConfigError(f"pod.hosts is for provider 'ssh', not {provider!r}",
                              hint="remove pod.hosts, or set pod.provider: ssh; cloud and local pools use pod.count")
        if count_set and count != len(hosts):
            raise ConfigError(f"pod.count is {count} but pod.hosts lists {len(hosts)} host(s)",
                              hint="with pod.hosts the pool is its hosts: remove pod.count")
        return tuple(_from_host(i, h) for i, h in enumerate(hosts))
    if count > 1 and provider == "ssh":
        raise ConfigError(f"pod.count is {count}, but an ssh pool is its list of hosts",
                          hint="list the hosts in pod.hosts (one entry per pod) and remove pod.count")
    if count > 1 and config.get("pod.target", None):
        raise ConfigError("pod.target names one existing pod; it cannot make a pool of pod.count "
                          f"{count}", hint="remove pod.target, or set pod.count: 1")
    return tuple(Pod(f"p{i}", i) for i in range(count))


def _check_network(provider: str, count: int, replace: bool = False) -> None:
    """``pod.network: cluster`` is for providers that rent pods on one private network
    (SPEC §9); anywhere else it is refused before anything is rented. So is
    ``pool.replace`` where a down member cannot be replaced on the network (RunPod)."""
    from workflow.providers import CLOUD, provider_class

    if provider not in CLOUD or not provider_class(provider).can_cluster:
        owned = provider in ("local", "ssh")
        raise ConfigError(
            f"pod.network: cluster: podflow cannot rent {provider!r} pods on one private network",
            hint=("these pods are on the network they already have: remove pod.network (an ssh pool "
                  "gives each pod's private address as pod.hosts[].addr)") if owned else
                 (f"{provider} has no private network between pods: use provider runpod (instant clusters) "
                  "or vastai (overlay networks), or rent pods that reach each other and list them in "
                  "pod.hosts with their private addr (provider: ssh); or remove pod.network"))
    if count < 2:
        raise ConfigError(f"pod.network: cluster needs pod.count of at least 2 (it is {count})",
                          hint="set pod.count to the number of nodes, or remove pod.network")
    if replace and not provider_class(provider).can_grow_cluster:
        raise ConfigError(f"pool.replace: a down pod of a {provider} private network cannot be replaced",
                          hint=provider_class(provider).cannot_grow_cluster + "; remove pool.replace")


def _plain(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.copy(value)


def _sibling(path: Optional[str], pod: Pod) -> Optional[str]:
    """``.../outputs`` -> ``.../outputs-p1``: a local pod's own copy of a directory."""
    if not path:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.name}-{pod.name}"))


def pod_config(config, pod: Pod):
    """``config`` as ``pod`` sees it: its host (ssh pool), its own directories (local pool),
    its name (which picks its local records, e.g. ``.podflow/session-p1.json``).

    The first pod of a pool without ``pod.hosts`` sees the config unchanged."""
    own_dirs = config.get("pod.provider", "local") == "local" and pod.index > 0
    if pod.host is None and not own_dirs:
        return config if pod.index == 0 else replace(config, pod_name=pod.name)
    data: Dict[str, Any] = _plain(config.data)
    sources = dict(config.sources)
    origin = f"pod.hosts[{pod.index}]"
    if pod.host is not None:
        data["pod"]["host"] = pod.host
        sources["pod.host"] = origin
        for key in ("port", "user", "identity_file"):
            value = getattr(pod, key)
            if value is not None:
                data["pod"][key] = value
                sources[f"pod.{key}"] = origin
    if own_dirs:  # every local pod its own checkout, outputs, data and state file
        for key in ("workdir", "outputs_dir", "data_dir"):
            data["remote"][key] = _sibling(data["remote"].get(key), pod)
        data["fsm"]["state_file"] = _sibling(data["fsm"].get("state_file"), pod)
    return replace(config, data=data, sources=sources, pod_name=pod.name)


def select(config, which: Optional[Any] = None) -> Tuple[Pod, ...]:
    """The pods a command acts on: all of them, or the one ``--pod NAME|INDEX`` names."""
    every = pods(config)
    if which is None or str(which).strip() == "":
        return every
    text = str(which).strip()
    for pod in every:
        if text in (pod.name, str(pod.index)):
            return (pod,)
    raise InputError(f"--pod {text}: no such pod; this pool has {', '.join(p.name for p in every)}",
                     hint="name a pod (p0, p1, ...) or give its index (0, 1, ...)")


# ---------------------------------------------------------------- fan-out


@dataclass(frozen=True)
class PodResult:
    """What one pod's share of a command gave: a value, or the error it raised."""

    pod: Pod
    value: Any = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.error is None


class PodsFailed(PodflowError):
    """Some pods of a pool failed (each named, with its own message); the others did their work.

    The exit code is the highest of the failed pods' codes (e.g. 4 when one pod could not
    be reached and another's work failed)."""

    def __init__(self, failed: Sequence[PodResult], total: int):
        self.failed = tuple(failed)
        self.exit_code = max(int(getattr(r.error, "exit_code", 1)) for r in failed)
        # pods that failed the same way share one line
        messages: Dict[str, List[str]] = {}
        hints: Dict[str, List[str]] = {}
        for r in failed:
            messages.setdefault(getattr(r.error, "message", None) or str(r.error), []).append(r.pod.name)
            hint = getattr(r.error, "hint", None)
            if hint:
                hints.setdefault(hint, []).append(r.pod.name)
        lines = [f"{len(failed)} of {total} pods failed: {', '.join(r.pod.name for r in failed)}"]
        for message, names in messages.items():
            lines.append(f"  {', '.join(names)}: " + message.replace("\n", "\n      "))
        shown = [hint if len(hints) == 1 else f"{', '.join(names)}: {hint}" for hint, names in hints.items()]
        super().__init__("\n".join(lines), hint="\n  ".join(shown) or None)


Work = Callable[[Pod], Any]


def fan_out(selected: Sequence[Pod], work: Work) -> List[PodResult]:
    """Run ``work(pod)`` for every pod, each in its pod's runtime context; results in pod order.

    A ``PodflowError`` is kept in that pod's result; any other exception (a bug) is
    raised once every pod has finished."""
    from workflow import runtime

    def one(pod: Pod) -> PodResult:
        with runtime.on_pod(pod):
            try:
                return PodResult(pod, value=work(pod))
            except ConnectionFailed as exc:
                return PodResult(pod, error=_unreachable(exc))
            except PodflowError as exc:
                return PodResult(pod, error=exc)

    if len(selected) == 1:
        return [one(selected[0])]
    results: List[Optional[PodResult]] = [None] * len(selected)

    def run(i: int, pod: Pod) -> None:
        try:
            results[i] = one(pod)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            results[i] = PodResult(pod, error=exc)

    # daemon threads: Ctrl-C in the caller ends the command without waiting for a pod
    threads = [threading.Thread(target=run, args=(i, pod), name=f"podflow-{pod.name}", daemon=True)
               for i, pod in enumerate(selected)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in results if r is not None]
    for r in done:
        if r.error is not None and not isinstance(r.error, PodflowError):
            raise r.error
    return done


def _unreachable(exc: ConnectionFailed) -> ConnectionFailed:
    """A pod that cannot be reached may have been ended outside podflow: its provider is
    asked, the ledger brought in line (SPEC §10), and what it said added to the hint."""
    from workflow import runtime
    from workflow.money.spend import notice_unreachable

    said = notice_unreachable(runtime.config())
    if said:
        exc.hint = f"{said}\n  {exc.hint}" if exc.hint else said
    return exc


def raise_failures(results: Sequence[PodResult]) -> None:
    """Raise the error of a one-pod pool as it was; ``PodsFailed`` naming each failed pod otherwise."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return
    if len(results) == 1:
        raise failed[0].error
    raise PodsFailed(failed, len(results))


def values(results: Sequence[PodResult]) -> Dict[str, Any]:
    """pod name -> value of every pod's result, once ``raise_failures`` found none failed."""
    raise_failures(results)
    return {r.pod.name: r.value for r in results}
