"""The one small interface every transport offers: run an argv, move files, atomic writes.

Remote paths are strings as the pod sees them; a leading ``~/`` means the pod user's
home. Commands are argument lists, never shell text: a transport that needs a shell
(SSH) quotes every element itself.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple


class NotServed(Exception):
    """No long-lived agent took an op (``Transport.agent_exec``); nothing ran: run it one-shot."""


@dataclass(frozen=True)
class RunResult:
    """What one remote command gave back."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Transport(abc.ABC):
    """A way to reach the pod. One instance = one connection for the whole invocation."""

    #: ``local`` or ``ssh``; shown in messages.
    kind: str = "?"

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        input: Optional[bytes] = None,
        timeout: Optional[float] = None,
        on_stdout: Optional[Callable[[str], None]] = None,
    ) -> RunResult:
        """Run ``argv`` on the pod and wait for it. ``env`` adds non-secret variables
        (they may be visible in ``ps`` on the pod); pass secrets through ``input``.
        ``on_stdout`` receives stdout text as it arrives (for follow/streaming); the
        result still holds all of it. ``timeout`` ends the wait with exit 124.
        Raises ``ConnectionFailed`` when the pod cannot be reached; a non-zero exit is
        not an error here (see ``RunResult.exit_code``)."""

    @abc.abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy one local file to ``remote`` (parent directories created)."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy one remote file to ``local`` (parent directories created)."""

    @abc.abstractmethod
    def read_file(self, remote: str) -> bytes:
        """The bytes of a remote file; ``FileNotFoundError`` when it is missing."""

    @abc.abstractmethod
    def write_file_atomic(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        """Write a remote file via a temp file + rename, so readers never see half of it."""

    def rsync_remote_shell(self) -> Optional[Sequence[str]]:
        """The ``-e`` program for rsync to reach the pod, or None when the pod is local."""
        return None

    def rsync_target(self, remote: str) -> str:
        """How rsync names ``remote`` (``user@host:path`` for SSH, the path itself locally)."""
        return remote

    def agent_exec(self, argv: Sequence[str], payload: bytes, *,
                   timeout: Optional[float] = None) -> Tuple[int, bytes, bytes]:
        """One agent op on a long-lived agent that ``argv`` starts (``podagent serve``):
        (exit code, stdout, stderr) as ``run`` of the one-shot op would give them.
        ``NotServed`` when no agent took it (the default: this transport keeps none)."""
        raise NotServed(f"{self.kind} transport keeps no agent")

    def describe(self) -> str:
        """Non-secret ``user@host:port`` or ``local`` for messages."""
        return self.kind

    def close(self) -> None:
        """Release the connection (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
