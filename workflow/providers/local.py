"""The ``local`` provider: the "pod" is this machine, reached without SSH.

A project of one local pod: it always exists and is always running; it cannot be
created, stopped or destroyed. A pool of local pods (``pod.count`` > 1, SPEC §8) gives
each pod a lifecycle of its own, so that a pod dying can be shown and tested without a
cloud: ``wf pod-down --pod p1`` ends every process of that pod at once (its sweep
runner, its runs, its watchdog: ``workflow.agent.halt``) and records it as stopped, or
``terminated`` with ``--destroy``; from then on its transport refuses every command and
this provider reports that state, as a cloud API reports a pod it ended. ``wf pod-up``
brings it back. Its files stay on this machine.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Optional

from workflow.providers.base import FixedHostProvider, PodInfo, PodState
from workflow.transport.local import down_record


class LocalProvider(FixedHostProvider):
    name = "local"
    status_map = {"running": PodState.RUNNING, "stopped": PodState.STOPPED, "terminated": PodState.TERMINATED}

    def _record(self):
        return down_record(self.config.remote.outputs_dir)

    def _pod(self) -> PodInfo:
        raw = "running"
        try:
            raw = json.loads(self._record().read_text()).get("state") or "terminated"
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            raw = "terminated"
        return PodInfo(provider=self.name, id="local", name=socket.gethostname(), state=self.map_state(raw),
                       raw_state=raw, price_per_hour=0.0)

    def in_pool(self) -> bool:
        return int(self.config.get("pod.count", 1) or 1) > 1

    def stop_unsupported_reason(self, pod) -> Optional[str]:
        if self.in_pool():
            return None
        return "the local provider is this machine: there is nothing to stop or destroy"

    def end_processes(self) -> int:
        """Every process of this pod ended at once, as a machine dying ends them."""
        from workflow.agent.halt import end_pod_processes

        return end_pod_processes(self.config.remote.outputs_dir)

    def mark_down(self, state: str) -> None:
        """Record the pod as ``stopped`` or ``terminated`` (atomically): it is down from now on."""
        from workflow.agent.fsutil import write_json_atomic

        write_json_atomic(str(self._record()), {"state": state, "at": time.time()})

    def bring_up(self) -> bool:
        """The pod is up again (``pod-up``); whether it was down."""
        try:
            self._record().unlink()
            return True
        except FileNotFoundError:
            return False
