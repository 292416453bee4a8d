"""Transports that reach the pod through a remote shell (SSH, direct or kept): quoting,
and the file operations built on one primitive, ``exec_command(shell_text)``.

Nothing here imports the SSH stack, so a command that goes through a kept connection
(``transport/kept/``) never loads paramiko.
"""

from __future__ import annotations

import abc
import os
import shlex
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from workflow.errors import InputError, RemoteCommandFailed
from workflow.transport.base import RunResult, Transport

_ENV_NAME_OK = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
MISSING_EXIT = 44  # read_file: no such file


def quote_path(path: str) -> str:
    """A remote path for the pod's shell: ``~/x`` -> ``"$HOME"/'x'``, others quoted."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        rest = path[2:]
        return '"$HOME"/' + shlex.quote(rest) if rest else '"$HOME"/'
    return shlex.quote(path)


def sftp_path(path: str) -> str:
    """SFTP resolves relative paths against the user's home: ``~/x`` -> ``x``."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


def build_command(argv: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None) -> str:
    """The shell text that runs ``argv`` literally, with ``env`` added and in ``cwd``."""
    if not argv:
        raise InputError("empty command")
    parts: List[str] = []
    if cwd:
        parts.append(f"cd -- {quote_path(cwd)} &&")
    if env:
        assigns = []
        for key, value in env.items():
            if not key or key[0].isdigit() or not set(key) <= _ENV_NAME_OK:
                raise InputError(f"invalid environment variable name: {key!r}")
            assigns.append(f"{key}={shlex.quote(str(value))}")
        parts.append("env " + " ".join(assigns))
    parts.extend(shlex.quote(str(a)) for a in argv)
    return " ".join(parts)


def dirname(path: str) -> str:
    head = path.rsplit("/", 1)[0] if "/" in path else ""
    if path.startswith("/") and head == "":
        return "/"
    return head or "."


class ShellTransport(Transport):
    """``run``, ``read_file``, ``write_file_atomic``, ``put`` and ``get`` as shell text
    through ``exec_command``; a subclass supplies that one primitive."""

    @abc.abstractmethod
    def exec_command(self, command: str, *, input: Optional[bytes] = None, timeout: Optional[float] = None,
                     on_stdout: Optional[Callable[[str], None]] = None) -> Tuple[int, bytes, bytes]:
        """Run shell text (already quoted) on the pod: (exit code, stdout, stderr) bytes."""

    def run(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
            input: Optional[bytes] = None, timeout: Optional[float] = None,
            on_stdout: Optional[Callable[[str], None]] = None) -> RunResult:
        code, out, err = self.exec_command(build_command(argv, env, cwd), input=input, timeout=timeout,
                                           on_stdout=on_stdout)
        return RunResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def _check(self, command: str, *, input: Optional[bytes] = None, what: str) -> bytes:
        code, out, err = self.exec_command(command, input=input)
        if code != 0:
            raise RemoteCommandFailed(what, code, (out + err).decode(errors="replace")[-2000:])
        return out

    def read_file(self, remote: str) -> bytes:
        q = quote_path(remote)
        code, out, err = self.exec_command(f"test -e {q} || exit {MISSING_EXIT}; exec cat -- {q}")
        if code == MISSING_EXIT:
            raise FileNotFoundError(f"{self.describe()}:{remote}")
        if code != 0:
            raise RemoteCommandFailed(f"read {remote}", code, err.decode(errors="replace"))
        return out

    def write_file_atomic(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        d = dirname(remote)
        name = remote.rstrip("/").rsplit("/", 1)[-1]
        tmp = quote_path(f"{d}/.{name}.{os.urandom(6).hex()}.tmp")
        script = (f"mkdir -p -- {quote_path(d)} && cat > {tmp} && chmod {mode:o} {tmp} && "
                  f"mv -f -- {tmp} {quote_path(remote)} || {{ rm -f -- {tmp}; exit 1; }}")
        self._check(script, input=data, what=f"write {remote}")

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        self.write_file_atomic(remote, local.read_bytes(), mode=local.stat().st_mode & 0o7777)

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        data = self.read_file(remote)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.urandom(4).hex()}.part")
        tmp.write_bytes(data)
        os.replace(tmp, local)
