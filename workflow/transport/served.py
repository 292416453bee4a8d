"""Agents kept serving on one SSH connection (``podagent serve``, ``workflow/agent/serve.py``).

A one-shot ``podagent OP`` starts python and imports the agent on the pod for every op
(0.1-0.3 s); an op handed to an agent already running costs one round trip. Each
connection keeps a few idle agents per agent command (``MAX_IDLE``); an op takes one
(or starts one: the same cost as a one-shot exec), so concurrent ops never wait for
each other, and gives it back when answered. An agent whose op was interrupted (Ctrl-C,
a time-out) is closed with its channel, as a one-shot exec's would be.

``NotServed`` (``transport.base``): no agent took the op, so nothing ran: none could
start (not installed yet, no python), the op could not be sent, or the agent had ended
(exit status 0) before it read it. The caller then runs the op one-shot. A channel that
closes with no status after the op was sent (a dropped link may have lost the agent's
``A``) is reported as the link's loss (or 255), never run again one-shot: a task would be
started twice. Once an agent has acknowledged an op (``A``), its fate
is reported like a one-shot exec's: its answer, 124 on a time-out, 130 when cancelled,
255 with no answer when the agent died, ``ConnectionFailed`` when the link did. An agent
that stays silent instead of acknowledging may have taken the op: it is closed and the op
reported as one with no answer (255), never run again elsewhere.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from workflow.agent.protocol import FrameReader, frame
from workflow.agent.serve import READY
from workflow.transport.base import NotServed

#: Idle agents kept per agent command on one connection.
MAX_IDLE = 2
_STEP = 0.5  # how often a wait looks at ``cancel`` and the link


class _Gone(Exception):
    """The agent's channel closed (or stayed silent past its bound)."""


class _Agent:
    """One ``podagent serve`` on its channel."""

    def __init__(self, chan):
        self.chan = chan
        self.reader = FrameReader()
        self.unsent = False  # the last send failed: the agent never had that op

    def recv_frame(self, until: Optional[float], cancel: Optional[threading.Event] = None):
        """The next frame; None when ``until`` passed or ``cancel`` was set; ``_Gone`` on EOF."""
        while True:
            got = self.reader.next()
            if got is not None:
                return got
            if cancel is not None and cancel.is_set():
                return None
            left = _STEP if until is None else min(_STEP, until - time.monotonic())
            if left <= 0:
                return None
            self.chan.settimeout(left)
            try:
                data = self.chan.recv(65536)
            except socket.timeout:
                continue
            except (OSError, EOFError) as exc:
                raise _Gone(str(exc)) from None
            if not data:
                raise _Gone("the channel closed")
            self.reader.feed(data)

    def send(self, data: bytes) -> None:
        """``_Gone`` when the channel was closed: the agent never had ``data`` whole."""
        try:
            self.chan.sendall(data)
        except Exception as exc:  # OSError, EOFError, paramiko's SSHException: the channel is closed
            self.unsent = True
            raise _Gone(str(exc)) from None

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass


def _left_unasked(agent: _Agent) -> bool:
    """Whether ``agent`` ended without reading an op: its channel closed with exit status 0
    (``serve.main``: idle too long, or its input closed) or we could not even send. An
    agent that took an op writes ``A`` before running it, so only a link that dropped can
    lose that; then no exit status comes either."""
    chan = agent.chan
    try:
        return bool(agent.unsent or (chan.exit_status_ready() and chan.recv_exit_status() == 0))
    except Exception:  # noqa: BLE001 - a closed channel without a status
        return False


class ServedAgents:
    """The agents serving on one connection (see the module docstring).

    ``open_channel(command)`` returns a paramiko channel running ``command``; ``link_ok()``
    says whether the connection is still up; ``lost()`` is the error when it is not."""

    def __init__(self, open_channel: Callable[[str], object], link_ok: Callable[[], bool],
                 lost: Callable[[], Exception], start_secs: float):
        self._open = open_channel
        self._link_ok = link_ok
        self._lost = lost
        self.start_secs = start_secs
        self._idle: Dict[str, List[_Agent]] = {}
        self._lock = threading.Lock()
        self.started = 0  # agents started (tests, benches)

    def _start(self, command: str) -> _Agent:
        try:
            agent = _Agent(self._open(command))
        except Exception as exc:  # no channel: the one-shot path reports it properly
            raise NotServed(f"no channel for an agent: {exc}") from None
        self.started += 1
        until = time.monotonic() + self.start_secs
        try:
            seen = b""
            while READY not in seen:  # a login shell's noise may come first
                if time.monotonic() > until:
                    raise _Gone("no answer")
                agent.chan.settimeout(max(0.01, until - time.monotonic()))
                try:
                    data = agent.chan.recv(4096)
                except socket.timeout:
                    continue
                if not data:
                    raise _Gone("ended before it was ready")  # e.g. not installed: exit 197
                seen += data
            agent.reader.feed(seen.split(READY, 1)[1])
            got = agent.recv_frame(until)
            if got is None or got[0] != b"H":
                raise _Gone("no greeting")
        except (_Gone, OSError, EOFError) as exc:
            agent.close()
            raise NotServed(f"podagent serve did not start: {exc}") from None
        return agent

    def _take(self, command: str) -> Tuple[_Agent, bool]:
        with self._lock:
            if command not in self._idle:  # a new agent version: the others are done
                for old in self._idle.values():
                    for agent in old:
                        agent.close()
                self._idle = {command: []}
            idle = self._idle[command]
            while idle:
                agent = idle.pop()
                if not agent.chan.closed and not agent.chan.exit_status_ready():
                    return agent, False
                agent.close()
        return self._start(command), True

    def _give_back(self, command: str, agent: _Agent) -> None:
        with self._lock:
            idle = self._idle.get(command)
            if idle is not None and len(idle) < MAX_IDLE:
                idle.append(agent)
                return
        agent.close()

    def call(self, command: str, payload: bytes, *, timeout: Optional[float] = None,
             cancel: Optional[threading.Event] = None,
             started: Optional[threading.Event] = None) -> Tuple[int, bytes, bytes]:
        """Run one op (``payload``: its name, a newline, its request) on an agent started by
        ``command``: (exit code, stdout, stderr) as a one-shot exec would give them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            agent, fresh = self._take(command)
            try:
                agent.send(frame(b"Q", payload))
                got = agent.recv_frame(time.monotonic() + self.start_secs)
                break
            except _Gone as exc:
                left = _left_unasked(agent)
                agent.close()
                if not left:  # it may have taken the op and acknowledged it into a link that dropped
                    if started is not None:
                        started.set()  # (the kept connection's caller must not run it again)
                    if not self._link_ok():
                        raise self._lost() from None
                    return 255, b"", b"podagent serve ended before it acknowledged the op\n"
                if fresh or not self._link_ok():  # it had ended before it read the op: nothing ran
                    raise NotServed(f"podagent serve did not take the op: {exc}") from None
                # an idle agent that ended meanwhile (idle too long): a fresh one
        if got is None or got[0] != b"A":  # silent or out of step: it may have taken the op
            agent.close()
            return 255, b"", b"podagent serve did not acknowledge the op\n"
        if started is not None:
            started.set()
        try:
            got = agent.recv_frame(deadline, cancel)
        except _Gone:
            agent.close()
            if not self._link_ok():
                raise self._lost() from None
            return 255, b"", b"podagent serve ended before it answered\n"
        if got is None:
            agent.close()
            if cancel is not None and cancel.is_set():
                return 130, b"", b""
            return 124, b"", f"timed out after {timeout}s\n".encode()
        if got[0] != b"R":
            agent.close()
            return 255, b"", b"podagent serve answered out of step\n"
        self._give_back(command, agent)
        return 0, got[1], b""

    def close(self) -> None:
        with self._lock:
            for agents in self._idle.values():
                for agent in agents:
                    agent.close()
            self._idle = {}
