"""The ``local`` provider: the "pod" is this machine, reached without SSH.

It always exists and is always running; it cannot be created, stopped or destroyed.
"""

from __future__ import annotations

import socket
from workflow.providers.base import FixedHostProvider, PodInfo, PodState


class LocalProvider(FixedHostProvider):
    name = "local"
    status_map = {"running": PodState.RUNNING}

    def _pod(self) -> PodInfo:
        return PodInfo(provider=self.name, id="local", name=socket.gethostname(), state=PodState.RUNNING,
                       raw_state="running", price_per_hour=0.0)

    def stop_unsupported_reason(self, pod):
        return "the local provider is this machine: there is nothing to stop or destroy"
