"""The ``ssh`` transport: one Fabric ``Connection`` per invocation, pinned host keys.

- Auth: the key at ``pod.identity_file`` (or the ``~/.ssh/config`` alias's
  ``IdentityFile``), and the password from ``REMOTE_SSH_PASSWORD`` when set. The password
  is read from the environment at connect time and handed to paramiko only; it is never
  written, never put on a command line, never in a message. rsync gets it through
  ``SSH_ASKPASS`` (a script that prints the variable from its own environment).
- Host keys: pinned on first use in ``pod.known_hosts`` (``hostkeys.PinOnFirstUse``);
  a changed key is refused (``HostKeyMismatch``, exit 4).
- Connect: retried with backoff (tenacity) until ``pod.connect_timeout_secs`` have
  passed, then ``ConnectionFailed``; a refused login fails at once. ``TCP_NODELAY`` on
  the socket (~40 ms per command otherwise) and ``curve25519-sha256`` preferred.
- Commands: argv quoted element by element (``shlex.quote``), ``env K=V`` prefix,
  ``cd -- DIR &&``; a leading ``~/`` in a path means the pod user's home. Commands run
  on a raw session channel of the Fabric connection's transport (Fabric's ``run`` adds
  ~15 ms of thread polling per command); a connection lost mid-command is
  ``ConnectionFailed``. A dead connection is reopened before the next command.
"""

from __future__ import annotations

import codecs
import os
import select
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import fabric
import paramiko
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from workflow.config.model import Config
from workflow.errors import ConnectionFailed, HostKeyMismatch
from workflow.transport import hostkeys
from workflow.transport.endpoint import Endpoint
from workflow.transport.params import KEEPALIVE_SECS as _KEEPALIVE_SECS
from workflow.transport.params import PASSWORD_ENV, SshParams, dead_link_secs, rsync_target, ssh_argv, ssh_params
from workflow.transport.served import ServedAgents
from workflow.transport.shell import ShellTransport, build_command, dirname as _dirname, quote_path, sftp_path
from workflow.transport.sshlog import quiet_ssh_library

quiet_ssh_library()

__all__ = ["SshTransport", "open_ssh_transport", "build_command", "quote_path", "sftp_path", "dead_link_secs",
           "PASSWORD_ENV"]

#: How long a command's output may still come after its exit status (sshd sends the status
#: when the command exits; what its pipe still held follows).
EOF_AFTER_STATUS_SECS = 2.0

# ---------------------------------------------------------------- connecting


class _Transient(Exception):
    """A connect attempt that may succeed if tried again (refused, timed out, reset)."""


def _prefer_curve25519(sock, **kwargs) -> paramiko.Transport:
    t = paramiko.Transport(sock, **kwargs)
    opts = t.get_security_options()
    kex = list(opts.kex)
    for name in ("curve25519-sha256@libssh.org", "curve25519-sha256"):
        if name in kex:
            kex.remove(name)
            kex.insert(0, name)
    opts.kex = tuple(kex)
    return t


class SshTransport(ShellTransport):
    """Commands and files on the pod over one SSH connection (see the module docstring)."""

    kind = "ssh"

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        known_hosts: Path,
        known_hosts_display: Optional[str] = None,
        identity_file: Optional[Path] = None,
        connect_timeout: float = 20.0,
        use_password: bool = True,
        askpass_dir: Optional[Path] = None,
    ):
        self.endpoint = endpoint
        self.known_hosts = Path(known_hosts)
        self.known_hosts_display = known_hosts_display or str(known_hosts)
        self.identity_file = Path(identity_file) if identity_file else None
        self.connect_timeout = float(connect_timeout)
        self.use_password = use_password
        self.askpass_dir = Path(askpass_dir) if askpass_dir else self.known_hosts.parent
        self._conn: Optional[fabric.Connection] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._served: Optional[ServedAgents] = None
        self._served_lock = threading.Lock()
        self._lock = threading.Lock()  # one connect at a time (threads may share a transport)
        self.connects = 0  # connections opened (tests, benches)
        self.lost = False  # the last connection died under a command
        self.connect_secs: Optional[float] = None

    # -- connection

    @property
    def user(self) -> str:
        return self.endpoint.user or "root"

    def describe(self) -> str:
        return f"{self.user}@{self.endpoint.host}:{self.endpoint.port}"

    def _password(self) -> Optional[str]:
        return Config.secret(PASSWORD_ENV) if self.use_password else None

    def _key(self) -> Optional[str]:
        if self.identity_file is not None and self.identity_file.is_file():
            return str(self.identity_file)
        return None

    def connect(self) -> None:
        """Open the connection now (otherwise the first operation does)."""
        with self._lock:
            self._connect_locked()

    def _connect_locked(self) -> None:
        if self._conn is not None and self._conn.transport is not None and self._conn.transport.is_active():
            return
        self.close()
        key, has_password = self._key(), self._password() is not None
        if key is None and not has_password:
            raise ConnectionFailed(
                f"cannot log in to {self.describe()}: no key at {self.identity_file} and {PASSWORD_ENV} is not set",
                hint="run 'wf setup-keys' (creates the key; installs it with REMOTE_SSH_PASSWORD set)",
            )
        started = time.monotonic()
        deadline = started + self.connect_timeout
        last: List[BaseException] = []

        def stop(state: RetryCallState) -> bool:
            return time.monotonic() >= deadline - 0.05

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(0.1 * 2 ** (state.attempt_number - 1), 2.0, deadline - time.monotonic()))

        try:
            for attempt in Retrying(stop=stop, wait=wait, retry=retry_if_exception_type(_Transient), reraise=True):
                with attempt:
                    self._connect_once(deadline, last)
        except _Transient:
            cause = last[-1] if last else None
            raise ConnectionFailed(
                f"cannot reach {self.describe()} within {self.connect_timeout:g}s: {_describe_error(cause)}",
                hint="is the pod up and pod.host/pod.port right? ('wf pod-status'; pod.connect_timeout_secs "
                "sets how long to keep trying)",
            ) from None
        self.connects += 1
        self.lost = False
        self.connect_secs = time.monotonic() - started

    def _connect_once(self, deadline: float, last: List[BaseException]) -> None:
        ep = self.endpoint
        left = max(0.2, deadline - time.monotonic())
        password = self._password()
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=left)
        except OSError as exc:
            last.append(exc)
            raise _Transient() from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: a dead link fails in bounded time
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            int(dead_link_secs(self.connect_timeout) * 1000))
        kwargs = {
            "sock": sock,
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": left,
            "auth_timeout": left,
            "transport_factory": _prefer_curve25519,
        }
        key = self._key()
        if key:
            kwargs["key_filename"] = key
        if password is not None:
            kwargs["password"] = password
        conn = fabric.Connection(ep.host, user=self.user, port=ep.port, connect_kwargs=kwargs,
                                 config=fabric.Config(lazy=True))
        client = conn.client
        client.get_host_keys().clear()
        if hasattr(client, "_system_host_keys"):
            client._system_host_keys.clear()  # ~/.ssh/known_hosts is not the authority here
        pinned = hostkeys.load(self.known_hosts)
        for name in pinned.keys():
            for ktype, k in pinned[name].items():
                client.get_host_keys().add(name, ktype, k)
        client.set_missing_host_key_policy(hostkeys.PinOnFirstUse(self.known_hosts, self.known_hosts_display))
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            conn.close()
            raise hostkeys.mismatch_error(hostkeys.known_hosts_name(ep.host, ep.port), exc.key, exc.expected_key,
                                          self.known_hosts_display) from None
        except HostKeyMismatch:
            conn.close()
            raise
        except paramiko.AuthenticationException:
            conn.close()
            tried = []
            if key:
                tried.append(f"key {key}")
            if password is not None:
                tried.append(f"the password from {PASSWORD_ENV}")
            raise ConnectionFailed(
                f"authentication failed for {self.describe()} (tried {' and '.join(tried)})",
                hint="install the key with 'REMOTE_SSH_PASSWORD=... wf setup-keys', or check pod.user "
                "and pod.identity_file",
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            conn.close()
            if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
                raise ConnectionFailed(f"{self.describe()} accepts none of the offered login methods") from None
            last.append(exc)
            raise _Transient() from exc
        finally:
            conn.connect_kwargs.pop("password", None)
            conn.connect_kwargs.pop("sock", None)
        conn.transport.set_keepalive(_KEEPALIVE_SECS)
        self._conn = conn

    def _transport(self) -> paramiko.Transport:
        self.connect()
        return self._conn.transport

    def _lost(self, exc: Optional[BaseException] = None) -> ConnectionFailed:
        self.close()
        self.lost = True
        detail = f": {_describe_error(exc)}" if exc is not None else ""
        return ConnectionFailed(f"connection to {self.describe()} lost{detail}",
                                hint="the remote work may still be running; check with 'wf check-connection'")

    def close(self) -> None:
        if self._served is not None:
            self._served.close()
            self._served = None
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    # -- commands

    def exec_command(
        self,
        command: str,
        *,
        input: Optional[bytes] = None,
        timeout: Optional[float] = None,
        on_stdout: Optional[Callable[[str], None]] = None,
        on_chunk: Optional[Callable[[int, bytes], None]] = None,
        cancel: Optional[threading.Event] = None,
        started: Optional[threading.Event] = None,
    ) -> Tuple[int, bytes, bytes]:
        """Run shell text (already quoted) on the pod: (exit code, stdout, stderr) bytes.

        ``on_chunk(fd, data)`` receives raw output as it arrives (fd 1 or 2) and then
        nothing is kept (the result's bytes are empty): the kept connection relays it.
        ``cancel`` set: the channel is closed (exit 130), as a Ctrl-C would. ``started``
        is set once the command was handed to the pod (a failure before it ran nothing)."""
        t = self._transport()
        try:
            chan = t.open_session(timeout=self.connect_timeout)
            chan.exec_command(command)
            if started is not None:
                started.set()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not t.is_active():
                raise self._lost(exc) from None
            raise ConnectionFailed(f"{self.describe()} refused a command channel: {_describe_error(exc)}") from None
        try:
            return self._pump(chan, t, input, timeout, on_stdout, on_chunk, cancel)
        finally:
            chan.close()

    def agent_exec(self, argv: Sequence[str], payload: bytes, *, timeout: Optional[float] = None,
                   cancel: Optional[threading.Event] = None,
                   started: Optional[threading.Event] = None) -> Tuple[int, bytes, bytes]:
        """An agent op on one of this connection's long-lived agents (``served.py``);
        ``cancel`` and ``started`` as in ``exec_command``."""
        self._transport()  # connect first: a connect failure is not "not served"

        def open_channel(command: str):
            chan = self._transport().open_session(timeout=self.connect_timeout)
            chan.exec_command(command)
            return chan

        with self._served_lock:  # threads share a transport (the kept connection's server)
            if self._served is None:
                self._served = ServedAgents(open_channel, self.is_connected, self._lost, self.connect_timeout)
            served = self._served
        return served.call(build_command(argv), payload, timeout=timeout, cancel=cancel, started=started)

    def _pump(self, chan, t, input, timeout, on_stdout, on_chunk=None, cancel=None) -> Tuple[int, bytes, bytes]:
        out: List[bytes] = []
        err: List[bytes] = []
        data = memoryview(input or b"")
        sent = 0
        if not data:
            chan.shutdown_write()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace") if on_stdout else None
        deadline = None if timeout is None else time.monotonic() + timeout

        def drain() -> None:
            while chan.recv_ready():
                chunk = chan.recv(65536)
                if not chunk:
                    break
                if on_chunk is not None:
                    on_chunk(1, chunk)
                    continue
                out.append(chunk)
                if decoder is not None:
                    text = decoder.decode(chunk)
                    if text:
                        on_stdout(text)
            while chan.recv_stderr_ready():
                chunk = chan.recv_stderr(65536)
                if not chunk:
                    break
                if on_chunk is not None:
                    on_chunk(2, chunk)
                    continue
                err.append(chunk)

        try:
            while not chan.status_event.is_set():
                if sent < len(data) and chan.send_ready():
                    sent += chan.send(data[sent:sent + 65536])
                    if sent >= len(data):
                        chan.shutdown_write()
                drain()
                if chan.status_event.is_set():
                    break
                if cancel is not None and cancel.is_set():
                    return 130, b"".join(out), b"".join(err)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    drain()
                    return 124, b"".join(out), b"".join(err) + f"timed out after {timeout}s\n".encode()
                step = 1.0 if left is None else min(left, 1.0)
                if sent < len(data):
                    step = min(step, 0.005)
                if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
                    chan.status_event.wait(step)  # output done; the exit status follows
                else:
                    select.select([chan], [], [], step)
            # sshd sends the exit status when the command exits, while its pipe may still
            # hold output: read on until EOF (bounded: a background child can hold it open)
            until = time.monotonic() + EOF_AFTER_STATUS_SECS
            while not (chan.eof_received or chan.closed) and time.monotonic() < until:
                drain()
                select.select([chan], [], [], 0.02)
            drain()
        except (socket.error, EOFError, paramiko.SSHException) as exc:
            raise self._lost(exc) from None
        if decoder is not None:
            tail = decoder.decode(b"", final=True)
            if tail:
                on_stdout(tail)
        if chan.exit_status == -1:
            if not t.is_active():
                raise self._lost()
            # the server sent no exit status (the command died of a signal)
            return 255, b"".join(out), b"".join(err)
        return chan.exit_status, b"".join(out), b"".join(err)

    # -- files

    def _sftp_client(self) -> paramiko.SFTPClient:
        t = self._transport()
        if self._sftp is None or self._sftp.sock.closed:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(t)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._lost(exc) if not t.is_active() else ConnectionFailed(
                    f"{self.describe()}: sftp unavailable: {_describe_error(exc)}") from None
        return self._sftp

    def _file_error(self, exc: BaseException, remote: str) -> BaseException:
        """An sftp failure: the link died (ConnectionFailed) or a file error (kept)."""
        t = self._conn.transport if self._conn is not None else None
        if isinstance(exc, (EOFError, paramiko.SSHException)) or t is None or not t.is_active():
            return self._lost(exc)
        if isinstance(exc, FileNotFoundError):
            return FileNotFoundError(f"{self.describe()}:{remote}")
        return exc

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        sftp = self._sftp_client()
        path = sftp_path(remote)
        tmp = f"{_dirname(path)}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            try:
                sftp.put(str(local), tmp, confirm=True)
            except FileNotFoundError:
                if not local.exists():
                    raise
                self._check(f"mkdir -p -- {quote_path(_dirname(remote))}", what=f"mkdir for {remote}")
                sftp.put(str(local), tmp, confirm=True)
            sftp.chmod(tmp, stat.S_IMODE(local.stat().st_mode))
            sftp.posix_rename(tmp, path)
        except (EOFError, OSError, paramiko.SSHException) as exc:
            if not local.exists():
                raise
            raise self._file_error(exc, remote) from None

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        sftp = self._sftp_client()
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            sftp.get(sftp_path(remote), str(tmp))
            os.replace(tmp, local)
        except (EOFError, OSError, paramiko.SSHException) as exc:
            raise self._file_error(exc, remote) from None
        finally:
            if tmp.exists():
                tmp.unlink()

    # -- rsync

    @property
    def params(self) -> SshParams:
        return SshParams(host=self.endpoint.host, port=int(self.endpoint.port), user=self.user,
                         known_hosts=str(self.known_hosts), known_hosts_display=self.known_hosts_display,
                         identity_file=str(self.identity_file) if self.identity_file else None,
                         connect_timeout=self.connect_timeout, askpass_dir=str(self.askpass_dir))

    def worked(self) -> bool:
        """This transport connected and its link did not die (worth keeping for the next command)."""
        return self.connects > 0 and not self.lost

    def is_connected(self) -> bool:
        return self._conn is not None and self._conn.transport is not None and self._conn.transport.is_active()

    def ssh_argv(self) -> List[str]:
        """``ssh`` options reaching the pod like this transport does (same key, port, pins)."""
        return ssh_argv(self.params, password=self._password() is not None)

    def rsync_remote_shell(self) -> Optional[Sequence[str]]:
        """The ``rsync -e`` program (join with ``shlex.join``). Pins the host key first by
        connecting once if it is not pinned yet (``ssh`` would refuse an unknown host)."""
        name = hostkeys.known_hosts_name(self.endpoint.host, self.endpoint.port)
        if hostkeys.load(self.known_hosts).get(name) is None:
            self.connect()
        return self.ssh_argv()

    def rsync_target(self, remote: str) -> str:
        return rsync_target(self.params, remote)


def _describe_error(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "connection closed"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    return text


def from_params(p: SshParams, *, use_password: bool = True) -> SshTransport:
    return SshTransport(p.endpoint, known_hosts=Path(p.known_hosts), known_hosts_display=p.known_hosts_display,
                        identity_file=Path(p.identity_file) if p.identity_file else None,
                        connect_timeout=p.connect_timeout, use_password=use_password,
                        askpass_dir=Path(p.askpass_dir))


def open_ssh_transport(config, endpoint: Endpoint) -> SshTransport:
    """The SSH transport to ``endpoint`` with ``config``'s keys, pins and time-outs.

    The endpoint is given, never looked up here: resolving it (``pod.host``, the session
    file, a provider's API) is the caller's job (``runtime.transport``), so this layer
    imports nothing above it. Connects lazily (the first operation, or ``connect()``)."""
    return from_params(ssh_params(config, endpoint))
