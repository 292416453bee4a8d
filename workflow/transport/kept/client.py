"""The caller's side of a kept connection: find a live one (bounded health check), run
commands through it (``KeptTransport``), start one, stop them. No SSH stack is imported
unless a command has to fall back to a direct connection.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from workflow.errors import ConnectionFailed
from workflow.transport.base import NotServed
from workflow.transport.kept import wire
from workflow.transport.params import SshParams, dead_link_secs, has_password, rsync_target, ssh_argv
from workflow.transport.shell import ShellTransport

#: How long a kept connection may take to answer a ping before it counts as wedged
#: (then it is killed and the command connects directly).
HEALTH_SECS = 2.0
#: How long a command waits for a kept connection that is still logging in (it was
#: started less than this ago) before connecting by itself.
STARTING_SECS = 5.0
_SERVER_MODULE = "workflow.transport.kept.server"


class _Unavailable(Exception):
    """The kept connection cannot take this command; nothing ran: go direct."""


def _paths(root: os.PathLike, pod: str, params: SshParams) -> Tuple[Path, Path]:
    d = wire.kept_dir(root)
    name = wire.base_name(pod, params.key)
    return d / f"{name}.sock", d / f"{name}.lock"


def _connect(path: Path, timeout: float) -> socket.socket:
    try:
        return wire.connect(path, timeout)
    except OSError as exc:
        raise _Unavailable(str(exc)) from None


def _owner(lock: Path) -> Tuple[Optional[int], Optional[float]]:
    """(pid, start time) of the server holding ``lock``, or (None, None) when none does."""
    try:
        fh = open(lock, "r")
    except FileNotFoundError:
        return None, None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            parts = fh.read().split()
            try:
                return int(parts[0]), float(parts[1])
            except (IndexError, ValueError):
                return -1, time.time()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None, None


def _is_ours(pid: int) -> bool:
    """``pid`` is a kept-connection server of this uid (not a reused pid)."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        return _SERVER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill(pid: Optional[int]) -> None:
    if pid and pid > 0 and _is_ours(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ask(path: Path, op: str, timeout: float = HEALTH_SECS) -> Dict:
    """One request/answer (``ping``, ``stop``); raises ``_Unavailable`` or ``socket.timeout``."""
    sock = _connect(path, timeout)
    try:
        wire.send_json(sock, b"Q", {"op": op, "cred": wire.credential()})
        kind, payload = wire.recv(sock)
        if kind != b"P":
            raise _Unavailable(f"unexpected answer {kind!r}")
        return json.loads(payload)
    except (wire.Closed, ValueError) as exc:
        raise _Unavailable(str(exc)) from None
    except socket.timeout:
        raise
    except OSError as exc:
        raise _Unavailable(str(exc)) from None
    finally:
        sock.close()


def _dir_is_private(d: Path) -> bool:
    try:
        st = d.stat()
    except FileNotFoundError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def find(root: os.PathLike, pod: str, params: SshParams) -> Optional["KeptTransport"]:
    """The live kept connection for this pod and these parameters, or None.

    A server that does not answer a ping within ``HEALTH_SECS`` (stopped, wedged) is
    killed; one still logging in (started under ``STARTING_SECS`` ago) is waited for."""
    sock, lock = _paths(root, pod, params)
    if not _dir_is_private(sock.parent):
        return None
    deadline = None
    while True:
        try:
            pong = _ask(sock, "ping")
            if pong.get("cred_ok"):
                return KeptTransport(params, sock, pong)
            stop(root, pod=pod)  # made with another password: this command logs in afresh
            return None
        except socket.timeout:
            _kill(_owner(lock)[0] or None)
            return None
        except _Unavailable:
            pass
        pid, started = _owner(lock)
        if pid is None or started is None or time.time() - started > STARTING_SECS:
            return None
        deadline = deadline or time.monotonic() + STARTING_SECS
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def spawn(root: os.PathLike, pod: str, params: SshParams, keepalive_secs: float) -> bool:
    """Start the background server for this pod unless one runs; False when one did.
    A server of the same pod with other parameters (a changed endpoint) is stopped."""
    sock, lock = _paths(root, pod, params)
    d = sock.parent
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    stop(root, pod=pod, keep_key=params.key)
    if _owner(lock)[0] is not None:
        return False
    import subprocess

    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[3])  # where ``workflow`` imports from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    log_fd = os.open(d / f"{wire.base_name(pod, params.key)}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", _SERVER_MODULE], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=log_fd, cwd="/", env=env,
                                start_new_session=True)
    finally:
        os.close(log_fd)
    job = {"params": params.to_doc(), "pod": pod, "root": str(Path(root).resolve()),
           "keepalive_secs": keepalive_secs}
    proc.stdin.write(json.dumps(job).encode())
    proc.stdin.close()
    # It outlives a short command on purpose; a long-lived caller (``wf mcp``) reaps the
    # ones that ended meanwhile here.
    _children[:] = [c for c in _children if c.poll() is None] + [proc]
    return True


_children: list = []


def kill_all(root: os.PathLike) -> None:
    """SIGKILL every kept connection of this project now (a test's teardown)."""
    for _name, lock in servers(root):
        _kill(_owner(lock)[0])


def servers(root: os.PathLike) -> List[Tuple[str, Path]]:
    """(name, lock path) of every kept connection this project has files for."""
    d = wire.kept_dir(root)
    if not _dir_is_private(d):
        return []
    return [(p.name[:-len(".lock")], p) for p in sorted(d.glob("*.lock"))]


def stop(root: os.PathLike, *, pod: Optional[str] = None, keep_key: Optional[str] = None) -> int:
    """End kept connections of this project (of ``pod`` only, but the one keyed
    ``keep_key``); returns how many were running. A server that does not answer is killed."""
    ended = 0
    for name, lock in servers(root):
        label, _, key = name.rpartition(".")
        if (pod is not None and label != wire.label(pod)) or key == keep_key:
            continue
        pid, _ = _owner(lock)
        if pid is None:
            continue
        ended += 1
        try:
            _ask(lock.with_suffix(".sock"), "stop", timeout=1.0)
        except (socket.timeout, _Unavailable):
            _kill(pid)
        deadline = time.monotonic() + 3
        while _owner(lock)[0] is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        if _owner(lock)[0] is not None:
            _kill(pid)
    return ended


class KeptTransport(ShellTransport):
    """Commands through the pod's kept connection; falls back to a direct one (same
    parameters) when the kept one cannot take a command before it ran."""

    kind = "ssh"

    def __init__(self, params: SshParams, sock: Path, pong: Dict):
        self.params = params
        self.endpoint = params.endpoint
        self.user = params.user
        self.known_hosts = Path(params.known_hosts)
        self.known_hosts_display = params.known_hosts_display
        self.identity_file = Path(params.identity_file) if params.identity_file else None
        self.connect_timeout = params.connect_timeout
        self.sock = sock
        self.server_pid = pong.get("pid")
        self.connects = 0
        self.connect_secs: Optional[float] = None
        self._direct = None

    def describe(self) -> str:
        return self.params.describe()

    def worked(self) -> bool:
        """This process connected directly (after a fallback) and its link is fine."""
        return self._direct is not None and self._direct.worked()

    def _go_direct(self):
        if self._direct is None:
            from workflow.transport.ssh import from_params

            self._direct = from_params(self.params)
        return self._direct

    def exec_command(self, command: str, *, input: Optional[bytes] = None, timeout: Optional[float] = None,
                     on_stdout: Optional[Callable[[str], None]] = None) -> Tuple[int, bytes, bytes]:
        if self._direct is None:
            try:
                return self._exec_kept({"op": "exec", "command": command}, input, timeout, on_stdout)
            except _Unavailable:
                pass
        direct = self._go_direct()
        code, out, err = direct.exec_command(command, input=input, timeout=timeout, on_stdout=on_stdout)
        self.connects, self.connect_secs = direct.connects, direct.connect_secs
        return code, out, err

    def agent_exec(self, argv: Sequence[str], payload: bytes, *,
                   timeout: Optional[float] = None) -> Tuple[int, bytes, bytes]:
        """The op on one of the kept connection's long-lived agents (``served.py``)."""
        if self._direct is not None:
            return self._direct.agent_exec(argv, payload, timeout=timeout)
        try:
            return self._exec_kept({"op": "agent", "argv": list(argv)}, payload, timeout, None)
        except _Unavailable as exc:
            raise NotServed(str(exc)) from None

    def _lost(self, why: str) -> ConnectionFailed:
        return ConnectionFailed(f"connection to {self.describe()} lost: {why}",
                                hint="the remote work may still be running; check with 'wf check-connection'")

    def _exec_kept(self, request: Dict, input, timeout, on_stdout) -> Tuple[int, bytes, bytes]:
        sock = _connect(self.sock, HEALTH_SECS)
        try:
            try:
                wire.send_json(sock, b"Q", {**request, "timeout": timeout, "stdin": bool(input),
                                            "cred": wire.credential()})
                if input:
                    wire.send(sock, b"I", bytes(input))
            except OSError as exc:
                raise _Unavailable(str(exc)) from None
            # Heartbeats come every HEARTBEAT_SECS while the command is quiet.
            sock.settimeout(dead_link_secs(self.connect_timeout))
            out: List[bytes] = []
            err: List[bytes] = []
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace") if on_stdout else None
            while True:
                try:
                    kind, payload = wire.recv(sock)
                except socket.timeout:
                    raise self._lost("its kept connection stopped answering") from None
                except (wire.Closed, OSError):
                    raise self._lost("its kept connection ended") from None
                if kind == b"O":
                    out.append(payload)
                    if decoder is not None:
                        text = decoder.decode(payload)
                        if text:
                            on_stdout(text)
                elif kind == b"E":
                    err.append(payload)
                elif kind == b"S":
                    if decoder is not None:
                        tail = decoder.decode(b"", final=True)
                        if tail:
                            on_stdout(tail)
                    return int(json.loads(payload)["code"]), b"".join(out), b"".join(err)
                elif kind == b"F":
                    doc = json.loads(payload)
                    if not doc.get("started"):
                        raise _Unavailable(doc.get("message"))
                    raise ConnectionFailed(str(doc.get("message")), hint=doc.get("hint"))
        finally:
            sock.close()  # also how a Ctrl-C here reaches the pod: the server closes the channel

    # -- rsync reaches the pod with its own ssh, pinned like the connection itself

    def rsync_remote_shell(self) -> Optional[Sequence[str]]:
        """rsync through the kept connection too (``kept/rsh.py``), its own ``ssh`` when
        the kept one cannot take it."""
        ssh = ssh_argv(self.params, password=has_password())
        return [sys.executable, "-m", "workflow.transport.kept.rsh", str(self.sock), str(len(ssh)), *ssh]

    def rsync_target(self, remote: str) -> str:
        return rsync_target(self.params, remote)

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
