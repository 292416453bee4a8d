"""Providers: one contract for local, ssh, lium, vastai and runpod (SPEC §7).

``base.Provider`` declares every action once; each provider lives in its own module,
imported only when used (its SDK even later, inside the client). The registry below
is typed and explicit: a name maps to ``module:class``, nothing is looked up in
``globals()``.
"""

from __future__ import annotations

import importlib
from typing import Dict, Tuple

from workflow.errors import ConfigError, ConnectionFailed
from workflow.transport.endpoint import Endpoint

#: provider name -> (module, class). The one list of providers.
REGISTRY: Dict[str, Tuple[str, str]] = {
    "local": ("workflow.providers.local", "LocalProvider"),
    "ssh": ("workflow.providers.ssh", "SshProvider"),
    "lium": ("workflow.providers.lium", "LiumProvider"),
    "vastai": ("workflow.providers.vastai", "VastProvider"),
    "runpod": ("workflow.providers.runpod", "RunpodProvider"),
}

CLOUD = ("lium", "vastai", "runpod")

#: ``checkout.require_cuda`` resolved for one pod (``cuda_policy``)
CUDA_REQUIRED, CUDA_IF_DRIVER, CUDA_OFF = "required", "if-driver", "off"


def cuda_policy(config) -> str:
    """What ``checkout.require_cuda`` means for this project's pod: ``true`` is
    ``required``, ``false`` is ``off``; ``auto`` (the default) is ``required`` on a
    rented cloud pod (you rent it for its GPUs) and ``if-driver`` on a host you already
    have (ssh, local): CUDA only where the host has ``nvidia-smi``, so a CPU-only host
    works without editing the config."""
    value = config.get("checkout.require_cuda", "auto")
    if value == "auto":
        return CUDA_REQUIRED if config.get("pod.provider", "local") in CLOUD else CUDA_IF_DRIVER
    return CUDA_REQUIRED if value else CUDA_OFF


def provider_class(name: str):
    try:
        module, cls = REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        raise ConfigError(f"pod.provider: unknown provider {name!r}; providers: {', '.join(REGISTRY)}",
                          hint=f"did you mean '{close[0]}'?" if close else None) from None
    from workflow.providers.base import Provider

    klass = getattr(importlib.import_module(module), cls)
    assert issubclass(klass, Provider)
    return klass


def get_provider(config):
    """The provider object for ``config`` (one per invocation, via ``runtime.cached``)."""
    from workflow import runtime

    name = config.pod.provider
    if runtime.peek("config") is config:
        return runtime.cached(f"provider:{name}", lambda: provider_class(name)(config))
    return provider_class(name)(config)


def current_endpoint(config) -> Endpoint:
    """The SSH endpoint of the pod this project uses.

    Cloud providers: the endpoint recorded in ``.podflow/session.json`` by ``pod-up``;
    without one, ``pod.target`` is looked up through the provider's API. ``ssh``:
    ``pod.host`` (an ``~/.ssh/config`` alias is resolved). The identity file is
    ``pod.identity_file`` unless the endpoint names one."""
    from workflow import session as sessions

    provider = config.pod.provider
    if provider == "local":
        raise ConnectionFailed("the local provider has no SSH endpoint")
    if provider == "ssh":  # what SshProvider.endpoint() says, without loading the providers
        from workflow.transport.sshconfig import resolve_ssh_endpoint

        return resolve_ssh_endpoint(config)
    s = sessions.load(config)
    if s is not None and s.provider == provider and s.host:
        if not config.pod.target or config.pod.target in (s.pod_id, s.name):
            ep = s.endpoint()
            return Endpoint(host=ep.host, port=ep.port, user=config.pod.user or ep.user,
                            identity_file=config.pod.identity_file)
    if config.pod.target:
        prov = get_provider(config)
        pod = prov.find(str(config.pod.target))
        if not pod.endpoints:
            raise ConnectionFailed(f"{provider} pod {pod.id} has no SSH endpoint (state {pod.raw_state or pod.state.value})",
                                   hint="start it, or run 'wf pod-up' to wait until it is usable")
        return pod.endpoints[0]
    raise ConnectionFailed(f"no {provider} pod known for this project", hint="run 'wf pod-up' first")
