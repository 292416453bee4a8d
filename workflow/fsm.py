"""The workflow state machine (SPEC §4): states and legal moves as data, persisted on the pod.

``transitions`` decides whether a command may start in the current state; the podagent
(``agent/state.py``) writes the new state with compare-and-set under a lock, so a
concurrent change between check and write is refused instead of lost. Only successful
work moves the state; a read or connection failure raises and moves nothing.
"""

from __future__ import annotations

import enum
import getpass
import socket
import sys
from typing import Any, Dict, List, Optional

from workflow.errors import InputError, TransitionRefused


class State(str, enum.Enum):
    INIT = "INIT"
    POD_READY = "POD_READY"
    BOOTSTRAPPED = "BOOTSTRAPPED"
    CHECKED_OUT = "CHECKED_OUT"
    SWEEP_RUNNING = "SWEEP_RUNNING"
    SWEEP_COMPLETED = "SWEEP_COMPLETED"


S = State
ANY = [s.value for s in State]

#: command -> (states it may start from, state it leads to on success, extra condition).
TABLE: Dict[str, tuple] = {
    "pod-up": ([S.INIT], S.POD_READY, None),
    "bootstrap": ([S.POD_READY, S.BOOTSTRAPPED, S.CHECKED_OUT, S.SWEEP_COMPLETED], S.BOOTSTRAPPED, None),
    "checkout": ([S.BOOTSTRAPPED, S.CHECKED_OUT, S.SWEEP_COMPLETED], S.CHECKED_OUT, None),
    "sweep-start": ([S.CHECKED_OUT, S.SWEEP_COMPLETED], S.SWEEP_RUNNING, None),
    "sweep-restart": ([S.SWEEP_RUNNING], S.SWEEP_RUNNING, "runner_dead"),
    "sweep-finished": ([S.SWEEP_RUNNING], S.SWEEP_COMPLETED, None),
    "sweep-stop": ([S.SWEEP_RUNNING], S.CHECKED_OUT, None),
    "pod-down": (list(State), S.INIT, None),
}


def order(state: Optional[str]) -> int:
    """How far along the flow ``state`` is (INIT 0 ... SWEEP_COMPLETED 5); an unknown state -1.
    A pool is as far as its pod that is least far."""
    return ANY.index(state) if state in ANY else -1


def _trigger_name(command: str) -> str:
    return command.replace("-", "_")


class _Model:
    """What ``transitions`` drives: only the current state and the runner condition."""

    def __init__(self):
        self.runner_dead = False


def build_machine(current: str) -> tuple:
    """A ``transitions`` machine restored at ``current`` (on_enter of it does not run).
    Imported here: reading the state (``fsm-status``) needs no machine."""
    from transitions import Machine

    model = _Model()
    rows = []
    for command, (sources, dest, condition) in TABLE.items():
        row = {"trigger": _trigger_name(command), "source": [s.value for s in sources], "dest": dest.value}
        if condition:
            row["conditions"] = condition
        rows.append(row)
    machine = Machine(model=model, states=ANY, transitions=rows, initial=current,
                      auto_transitions=False, ignore_invalid_triggers=False)
    return machine, model


def allowed_from(command: str) -> List[str]:
    sources = list(TABLE[command][0])
    if command == "sweep-start":
        sources.append(S.SWEEP_RUNNING)
    return [s.value for s in sources]


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


class Fsm:
    """The persisted state machine of one pod, reached through its ``AgentClient``."""

    def __init__(self, agent, *, enforce: bool = True, warn=None):
        self.agent = agent
        self.enforce = enforce
        self._warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))

    def status(self) -> Dict[str, Any]:
        """The state document (``state``, ``updated_at``, ``history``, ...); INIT when absent."""
        return self.agent.call("state.read")

    def check(self, command: str, *, runner_dead: bool = False, known: Optional[str] = None) -> str:
        """Fail fast (exit 3) if ``command`` may not start now; return the current state.
        ``known``: the state as a call made just now read it (no round trip of its own)."""
        current = known or self.status()["state"]
        if current not in ANY:
            raise InputError(f"state file holds unknown state {current!r}; fix it with 'wf fsm-reset STATE --reason TEXT'")
        machine, model = build_machine(current)
        model.runner_dead = runner_dead
        trigger = _trigger_name(command)
        if command == "sweep-start" and current == S.SWEEP_RUNNING:
            trigger = "sweep_restart"
        if not model.may_trigger(trigger):
            allowed = allowed_from(command)
            if self.enforce:
                raise TransitionRefused(command, current, allowed)
            self._warn(f"state machine not enforced: '{command}' runs from {current} (allowed: {', '.join(allowed)})")
        return current

    def advance(self, command: str, seen: str, **fields: Any) -> Dict[str, Any]:
        """After ``command``'s work succeeded: move to its destination if the state is still
        ``seen`` (what ``check`` returned). ``fields`` are stored beside the state."""
        dest = TABLE[command][1].value
        doc = self.agent.call("state.transition", to=dest, trigger=command, expect=[seen],
                              enforce=self.enforce, by=who(), set=fields)
        if doc.get("warning"):
            self._warn(doc["warning"])
        return doc

    def reset(self, state: str, reason: Optional[str]) -> Dict[str, Any]:
        if state not in ANY:
            raise InputError(f"unknown state {state!r}; states: {', '.join(ANY)}")
        return self.agent.call("state.transition", to=state, trigger="fsm-reset", expect=None,
                               by=who(), reason=reason or "manual reset")

    def record(self, **fields: Any) -> Dict[str, Any]:
        """Store facts (e.g. the checked-out SHA) in the state file without moving it."""
        return self.agent.call("state.update", set=fields)
