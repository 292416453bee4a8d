"""Per-invocation singletons: the config, the one connection, the agent, the FSM.

Chained tasks (``wf pod-up bootstrap checkout``) share them, so an invocation opens
one connection whatever it runs. Tests that call library code directly use ``reset()``.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any, Dict, Optional

_cache: Dict[str, Any] = {}


def reset() -> None:
    transport = _cache.get("transport")
    if transport is not None:
        transport.close()
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
        _cache["transport"] = open_transport(cfg, endpoint)
    return _cache["transport"]


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
