"""Transports: how the engine reaches the pod (``local`` or ``ssh``)."""

from __future__ import annotations

from workflow.transport.base import RunResult, Transport

__all__ = ["RunResult", "Transport", "open_transport"]


def open_transport(config, endpoint=None) -> Transport:
    """The transport for ``config``'s pod: local, or SSH to ``endpoint`` (resolved by the
    caller). SSH modules are imported only when needed (cold start of ``wf --help`` must
    stay fast)."""
    provider = config.pod.provider
    if provider == "local":
        from workflow.transport.local import LocalTransport, down_record

        return LocalTransport(down_record(config.remote.outputs_dir))
    from workflow.transport.ssh import open_ssh_transport  # noqa: PLC0415

    if endpoint is None:
        raise ValueError(f"provider {provider!r} needs an SSH endpoint")
    return open_ssh_transport(config, endpoint)
