"""Per-invocation singletons: the config, the one connection, the agent, the FSM.

Chained tasks (``wf pod-up bootstrap checkout``) share them, so an invocation opens
one connection whatever it runs. Tests that call library code directly use ``reset()``.

Commands of the CLI also keep the connection for the next command
(``keep_connections()``, ``pod.keepalive_secs``): the first one that connects directly
starts the pod's kept connection when it ends; later ones go through it
(``workflow.transport.kept``).
"""

from __future__ import annotations

import atexit
import sys
from typing import Any, Dict, Optional

_cache: Dict[str, Any] = {}
_keeping = {"on": False}


def keep_connections(on: bool = True) -> None:
    """Use and leave kept connections (the CLI turns this on; library callers do not)."""
    _keeping["on"] = on


def forget_kept() -> None:
    """This invocation leaves no kept connection behind (``pod-down``, ``disconnect``)."""
    _cache.pop("keep", None)


def reset() -> None:
    transport = _cache.get("transport")
    keep = _cache.get("keep")
    if transport is not None:
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


def set_flags(**flags: Any) -> None:
    """Config values given as task flags (highest precedence); dotted keys."""
    clean = {k: v for k, v in flags.items() if v is not None}
    if clean != _cache.get("flags", {}):
        reset()
        _cache["flags"] = clean


def config():
    if "config" not in _cache:
        from workflow.config import load_config

        _cache["config"] = load_config(flags=_cache.get("flags"))
    return _cache["config"]


def transport():
    """The one connection to the pod. The endpoint is resolved here (the session's job:
    ``pod.host``, the session file or the provider's API), then handed to the transport."""
    if "transport" not in _cache:
        from workflow.transport import open_transport

        cfg = config()
        endpoint = None
        if cfg.pod.provider != "local":
            from workflow.providers import current_endpoint

            endpoint = current_endpoint(cfg)
            keepalive = float(cfg.get("pod.keepalive_secs", 0) or 0)
            if _keeping["on"] and keepalive > 0:
                from workflow.transport.kept import client as kept
                from workflow.transport.params import ssh_params

                params = ssh_params(cfg, endpoint)
                _cache["keep"] = (cfg.root, "pod", params, keepalive)
                found = kept.find(cfg.root, "pod", params)
                if found is not None:
                    _cache["transport"] = found
                    return found
        _cache["transport"] = open_transport(cfg, endpoint)
    return _cache["transport"]


def disconnect() -> int:
    """End this project's kept connections now; how many were running."""
    from workflow.transport.kept import client as kept

    forget_kept()
    return kept.stop(config().root)


def agent():
    if "agent" not in _cache:
        from workflow.agent_client import AgentClient

        cfg = config()
        # On the local "pod" this interpreter is a known python >= 3.8 and skips the
        # ~0.2 s of a pyenv shim that a bare `python3` may resolve to.
        python = sys.executable if cfg.pod.provider == "local" else "python3"
        _cache["agent"] = AgentClient(transport(), cfg.remote.outputs_dir, python=python,
                                      state_file=cfg.fsm.state_file)
    return _cache["agent"]


def fsm():
    if "fsm" not in _cache:
        from workflow.fsm import Fsm

        _cache["fsm"] = Fsm(agent(), enforce=bool(config().fsm.enforce))
    return _cache["fsm"]


def cached(name: str, factory) -> Any:
    """Any other per-invocation object (e.g. a provider client)."""
    if name not in _cache:
        _cache[name] = factory()
    return _cache[name]


def peek(name: str) -> Optional[Any]:
    return _cache.get(name)
