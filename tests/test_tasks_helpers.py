"""Helpers shared by the tracked-task tests: /proc scans, tmux clean-up, a streaming gate."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List


def live_pids_with(token: str) -> List[int]:
    """Live (non-zombie) processes whose command line contains ``token``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        state = stat[stat.rfind(")") + 2:].split()[0]
        if state in ("Z", "X"):
            continue
        if token in cmdline:
            found.append(int(name))
    return found


def wait_until(predicate, secs: float = 5.0, step: float = 0.02):
    end = time.monotonic() + secs
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


def kill_tmux_server(socket: str, env=None) -> None:
    tmux = shutil.which("tmux")
    if tmux:
        subprocess.run([tmux, "-L", socket, "kill-server"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=env)


def gate_path() -> Path:
    """A file path that a test creates to let a task go on; its folder is readable by any
    user (a task on an SSH pod runs as the pod's user). Not created yet."""
    folder = tempfile.mkdtemp(prefix="wf-gate-")
    os.chmod(folder, 0o755)
    return Path(folder) / "go"


class StreamGate:
    """Proves that a log is streamed while its task runs, with no clock: the task prints
    ``first``, then waits (bounded) for a file that only the follower's sink creates once it
    has seen ``first``. Lines after it come only if ``first`` arrived while the task ran;
    else the task prints ``not-streamed``."""

    def __init__(self, first: str):
        self.first = first
        self.path = gate_path()
        self.chunks: List[str] = []

    def script(self, rest: str) -> str:
        """A task command: print ``first``, wait for the gate (30 s at most), then ``rest``."""
        return (f"echo {self.first}; for i in $(seq 600); do [ -e {self.path} ] && break; sleep 0.05; done; "
                f"[ -e {self.path} ] || echo not-streamed; {rest}")

    def sink(self, text: str) -> None:
        self.chunks.append(text)
        if self.first in "".join(self.chunks):
            self.path.touch()

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def close(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


def bytes_read(pid: int) -> int:
    """What process ``pid`` has read so far (``rchar``; 0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/io").read_text().split("rchar:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0


class AgentOpWatch:
    """Tells when an agent op starts on the pod from now on: a one-shot ``podagent OP``
    process, or a long-lived agent (``podagent serve``) reading a request (its ``rchar``
    grows; one started later counts at once). ``marker`` is a part of the agents'
    command lines (the agent's path, or the pod's directory)."""

    def __init__(self, marker: str, op: str):
        self.marker, self.op = marker, op
        self.before = {pid: bytes_read(pid) for pid in self.serving()}

    def _with(self, word: str) -> List[int]:
        return [pid for pid in live_pids_with(self.marker) if word in _words(pid)]

    def serving(self) -> List[int]:
        return self._with("serve")

    def one_shot(self) -> List[int]:
        return self._with(self.op)

    def started(self) -> bool:
        return bool(self.one_shot()) or any(bytes_read(pid) > self.before.get(pid, 0) for pid in self.serving())


def _words(pid: int) -> List[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []
