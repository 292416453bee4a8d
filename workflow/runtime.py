"""Per-invocation singletons: the config, and per pod its connection, agent and FSM.

Chained tasks (``wf pod-up bootstrap checkout``) share them, so an invocation opens
one connection per pod whatever it runs. Tests that call library code directly use ``reset()``.

Pools (SPEC §8): ``on_pod(pod)`` makes a pod current in this thread (``pool.fan_out``
does it for each pod's worker), and ``config()``, ``transport()``, ``agent()`` and
``fsm()`` are then that pod's. Outside any pod, ``config()`` is the project's config
and the others are the first pod's (``p0``), as in a project of one pod.

Commands of the CLI also keep each pod's connection for the next command
(``keep_connections()``, ``pod.keepalive_secs``): the first one that connects directly
starts the pod's kept connection when it ends; later ones go through it
(``workflow.transport.kept``).
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
from typing import Any, Dict, Iterator, Optional

_cache: Dict[str, Any] = {}
_local = threading.local()
_keeping = {"on": False}
_reached: Dict[str, Any] = {}  # kept_project()


def keep_connections(on: bool = True) -> None:
    """Use and leave kept connections (the CLI turns this on; library callers do not)."""
    _keeping["on"] = on


def forget_kept() -> None:
    """This invocation leaves no kept connection behind (``pod-down``, ``disconnect``)."""
    _reached.clear()
    for key in [k for k in _cache if k.split(":")[0] == "keep"]:
        _cache.pop(key, None)


def reset() -> None:
    for key, transport in list(_cache.items()):
        if key.split(":")[0] != "transport":
            continue
        keep = _cache.get("keep:" + key.split(":", 1)[1])
        connected = keep is not None and getattr(transport, "worked", lambda: False)()
        transport.close()
        if connected:
            from workflow.transport.kept import client as kept

            try:
                kept.spawn(*keep)
            except OSError:
                pass  # a kept connection is a speed-up, never a reason to fail
    _cache.clear()


atexit.register(reset)


def forget_pod(pod) -> None:
    """Drop ``pod``'s connection, agent and FSM: a new pod now has its name (a replacement)."""
    for key in [k for k in _cache if k.split(":")[0] in ("transport", "agent", "fsm", "keep")
                and k.split(":", 1)[1] == pod.name]:
        value = _cache.pop(key)
        if key.startswith("transport:"):
            with contextlib.suppress(Exception):  # the old pod is gone: closing may fail, and may not matter
                value.close()


def set_flags(**flags: Any) -> None:
    """Config values given as task flags (highest precedence); dotted keys."""
    clean = {k: v for k, v in flags.items() if v is not None}
    if clean != _cache.get("flags", {}):
        reset()
        _cache["flags"] = clean


def _project_config():
    if "config" not in _cache:
        from workflow.config import load_config

        _cache["config"] = load_config(flags=_cache.get("flags"))
    return _cache["config"]


@contextlib.contextmanager
def on_pod(pod) -> Iterator[None]:
    """Make ``pod`` (a ``workflow.pool.Pod``) the current pod of this thread."""
    before = getattr(_local, "pod", None)
    _local.pod = pod
    try:
        yield
    finally:
        _local.pod = before


def pod_here():
    """The pod ``on_pod`` made current in this thread, or None."""
    return getattr(_local, "pod", None)


def current_pod():
    """The pod this thread works on: the one ``on_pod`` set, else the pool's first."""
    pod = getattr(_local, "pod", None)
    if pod is None:
        from workflow import pool

        pod = pool.pods(_project_config())[0]
    return pod


def _pod_config(pod):
    key = f"config:{pod.name}"
    if key not in _cache:
        from workflow import pool

        _cache[key] = pool.pod_config(_project_config(), pod)
    return _cache[key]


def config():
    """The current pod's config inside ``on_pod``; the project's config outside."""
    pod = getattr(_local, "pod", None)
    return _project_config() if pod is None else _pod_config(pod)


def transport():
    pod = current_pod()
    key = f"transport:{pod.name}"
    if key not in _cache:
        from workflow.transport import open_transport

        # The endpoint is resolved here (the session's job: ``pod.host``, the pod's
        # session file or the provider's API), then handed to the transport.
        cfg = _pod_config(pod)
        endpoint = None
        if cfg.pod.provider != "local":
            from workflow.providers import current_endpoint

            endpoint = current_endpoint(cfg)
            keepalive = float(cfg.get("pod.keepalive_secs", 0) or 0)
            if _keeping["on"]:
                _reached["project"] = (cfg.root, keepalive)
            if _keeping["on"] and keepalive > 0:
                from workflow.transport.kept import client as kept
                from workflow.transport.params import ssh_params

                params = ssh_params(cfg, endpoint)  # its key tells the pods' kept connections apart
                _cache[f"keep:{pod.name}"] = (cfg.root, "pod", params, keepalive)
                found = kept.find(cfg.root, "pod", params)
                if found is not None:
                    _cache[key] = found
                    return found
        _cache[key] = open_transport(cfg, endpoint)
    return _cache[key]


def kept_project():
    """(project root, ``pod.keepalive_secs``) when this invocation of the CLI reached a pod
    and did not end its kept connections (``disconnect``), else None: the CLI keeps its
    warm server by it (``workflow/cli/zygote.py``)."""
    return _reached.get("project")


def disconnect() -> int:
    """End this project's kept connections now (every pod's); how many were running."""
    from workflow.transport.kept import client as kept

    forget_kept()
    return kept.stop(_project_config().root)


def agent():
    pod = current_pod()
    key = f"agent:{pod.name}"
    if key not in _cache:
        from workflow.agent_client import AgentClient

        cfg = _pod_config(pod)
        # On the local "pod" this interpreter is a known python >= 3.8 and skips the
        # ~0.2 s of a pyenv shim that a bare `python3` may resolve to.
        python = sys.executable if cfg.pod.provider == "local" else "python3"
        _cache[key] = AgentClient(transport(), cfg.remote.outputs_dir, python=python,
                                  state_file=cfg.fsm.state_file)
    return _cache[key]


def fsm():
    pod = current_pod()
    key = f"fsm:{pod.name}"
    if key not in _cache:
        from workflow.fsm import Fsm

        _cache[key] = Fsm(agent(), enforce=bool(_pod_config(pod).fsm.enforce))
    return _cache[key]


def cached(name: str, factory) -> Any:
    """Any other per-invocation object (e.g. a provider client)."""
    if name not in _cache:
        _cache[name] = factory()
    return _cache[name]


def peek(name: str) -> Optional[Any]:
    return _cache.get(name)
