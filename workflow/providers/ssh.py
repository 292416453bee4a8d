"""The ``ssh`` provider: a host you already have (``pod.host``, maybe an ``~/.ssh/config``
alias such as seed 003's ``OPS_DEFAULT_HOST``). It cannot be created, stopped or destroyed.
"""

from __future__ import annotations

from workflow.providers.base import FixedHostProvider, PodInfo, PodState
from workflow.transport.endpoint import Endpoint


class SshProvider(FixedHostProvider):
    name = "ssh"
    status_map = {"reachable": PodState.RUNNING}

    def endpoint(self) -> Endpoint:
        """``pod.host`` (``user@host:port`` or an ``~/.ssh/config`` alias), resolved the
        same way the SSH transport resolves it."""
        from workflow.transport.sshconfig import resolve_ssh_endpoint

        return resolve_ssh_endpoint(self.config)

    def _pod(self) -> PodInfo:
        ep = self.endpoint()
        return PodInfo(provider=self.name, id=str(self.config.pod.host), name=str(self.config.pod.host),
                       state=PodState.RUNNING, raw_state="configured", endpoints=(ep,))

    def stop_unsupported_reason(self, pod):
        return "the ssh provider uses a host you own: podflow cannot stop or destroy it"
