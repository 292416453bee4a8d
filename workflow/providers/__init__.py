"""Providers: one contract for local, ssh, lium, vastai and runpod (SPEC §7).

STUB until the providers issue lands: ``current_endpoint`` is what the SSH transport
calls for cloud providers.
"""

from __future__ import annotations

from workflow.errors import ConnectionFailed
from workflow.transport.endpoint import Endpoint


def current_endpoint(config) -> Endpoint:
    """The SSH endpoint of the pod this project rented (from ``.podflow/session.json``)."""
    raise ConnectionFailed(f"no {config.pod.provider} pod known for this project", hint="run 'wf pod-up' first")
