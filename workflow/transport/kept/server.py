"""The kept connection's background process: ``python -m workflow.transport.kept.server``.

Reads its job from stdin (JSON: ``params``, ``pod``, ``root``, ``keepalive_secs``), takes
``<name>.lock`` (one per pod and connection; a second one started meanwhile leaves at
once), logs in once with the direct transport, then serves commands on ``<name>.sock``
until it has been idle ``keepalive_secs``, its link dies, the pin of its host changes, it
is told to stop, or it gets SIGTERM. Each caller gets its own SSH channel on the one
connection (threads), so concurrent commands share it safely; a caller of another uid
(``SO_PEERCRED``) is refused. Agent ops (``agent``) go to the connection's long-lived
agents on the pod (``transport/served.py``), which outlive each caller as the connection
does. A password reaches it only through its environment.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from workflow.errors import PodflowError
from workflow.transport.base import NotServed
from workflow.transport.kept import wire
from workflow.transport.params import SshParams


def _log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {text}\n")
    sys.stderr.flush()


def _stamp(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Server:
    """Serves one pod's kept connection (see the module docstring)."""

    def __init__(self, ssh, params: SshParams, listener: socket.socket, sock_path: Path, keepalive: float):
        self.ssh, self.params, self.listener, self.sock_path = ssh, params, listener, sock_path
        self.keepalive = keepalive
        self.stop = threading.Event()
        self.active = 0
        self.last_used = time.monotonic()
        self._count = threading.Lock()
        self.host_key = ssh._conn.transport.get_remote_server_key()
        self.pins = _stamp(Path(params.known_hosts))
        self.cred = wire.credential()

    # -- why it would end

    def pin_changed(self) -> bool:
        """The pin file changed and no longer holds the key this connection was made with."""
        stamp = _stamp(Path(self.params.known_hosts))
        if stamp == self.pins:
            return False
        from workflow.transport import hostkeys

        entry = hostkeys.load(Path(self.params.known_hosts)).get(
            hostkeys.known_hosts_name(self.params.host, self.params.port))
        if entry is not None and entry.get(self.host_key.get_name()) == self.host_key:
            self.pins = stamp
            return False
        return True

    def serve(self) -> str:
        self.listener.settimeout(0.25)
        while True:
            if self.stop.is_set():
                return "told to stop"
            if not self.ssh.is_connected():
                return "link lost"
            with self._count:
                idle = self.active == 0 and time.monotonic() - self.last_used >= self.keepalive
            if idle:
                return f"idle {self.keepalive:g}s"
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return "listener closed"
            with self._count:
                self.active += 1  # counted before its thread runs: drain() waits for it
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def drain(self, grace_secs: float = 10.0) -> None:
        """On the way out: a caller already queued on the listener hears that its command
        did not start (so it connects directly, as if no server had been found, instead of
        failing as a lost link), and the callers being served get ``grace_secs`` to finish."""
        self.listener.setblocking(False)
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                break
            try:
                conn.settimeout(1.0)
                _kind, payload = wire.recv(conn)
                if json.loads(payload).get("stdin"):
                    wire.recv(conn)
                wire.send_json(conn, b"F", {"started": False, "message": "the kept connection is ending"})
            except (wire.Closed, OSError, ValueError):
                pass
            finally:
                conn.close()
        deadline = time.monotonic() + grace_secs
        while self.active and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- one caller

    def handle(self, conn: socket.socket) -> None:
        try:
            pid, uid = wire.peer_uid(conn)
            if uid != os.getuid():
                _log(f"refused a caller of uid {uid} (pid {pid})")
                return
            conn.settimeout(10)
            kind, payload = wire.recv(conn)
            req = json.loads(payload)
            op = req.get("op")
            same = req.get("cred") == self.cred
            if op == "ping":
                wire.send_json(conn, b"P", {"pid": os.getpid(), "endpoint": self.params.describe(), "cred_ok": same})
            elif op == "stop":
                self.stop.set()
                wire.send_json(conn, b"P", {"pid": os.getpid(), "stopping": True})
            elif op in ("exec", "agent") and not same:
                wire.send_json(conn, b"F", {"started": False, "message": "another credential"})
            elif op in ("exec", "agent"):
                self.exec(conn, req)
            elif op == "stream" and same:
                self.stream(conn, req)
        except (wire.Closed, OSError, ValueError):
            pass
        finally:
            conn.close()
            with self._count:
                self.active -= 1
                self.last_used = time.monotonic()

    def usable(self, conn: socket.socket) -> bool:
        """Whether a command may start now; if not the caller hears ``F`` (not started)."""
        if self.pin_changed():
            _log("the pinned host key changed: ending")
            self.stop.set()
            wire.send_json(conn, b"F", {"started": False, "message": "the pinned host key changed"})
            return False
        if not self.ssh.is_connected():
            wire.send_json(conn, b"F", {"started": False, "message": "link lost"})
            return False
        return True

    def exec(self, conn: socket.socket, req: dict) -> None:
        from workflow.errors import ConnectionFailed

        data = b""
        if req.get("stdin"):
            kind, data = wire.recv(conn)
        if not self.usable(conn):
            return
        conn.settimeout(None)
        sending = threading.Lock()
        cancel, started, done = threading.Event(), threading.Event(), threading.Event()
        last = [time.monotonic()]

        def relay(fd: int, chunk: bytes) -> None:
            with sending:
                last[0] = time.monotonic()
                try:
                    wire.send(conn, b"O" if fd == 1 else b"E", chunk)
                except OSError:
                    cancel.set()

        def watch() -> None:  # the caller left (Ctrl-C) or cancelled: close the channel
            try:
                wire.recv(conn)
            except (wire.Closed, OSError, ValueError):
                pass
            cancel.set()

        def beat() -> None:
            while not done.wait(wire.HEARTBEAT_SECS / 2):
                with sending:
                    if time.monotonic() - last[0] >= wire.HEARTBEAT_SECS:
                        last[0] = time.monotonic()
                        try:
                            wire.send(conn, b"H")
                        except OSError:
                            cancel.set()
                            return

        threading.Thread(target=watch, daemon=True).start()
        threading.Thread(target=beat, daemon=True).start()
        try:
            if req["op"] == "agent":  # an agent op (``served.py``): its answer comes whole
                code, out, err = self.ssh.agent_exec(req["argv"], data, timeout=req.get("timeout"),
                                                     cancel=cancel, started=started)
            else:
                code, out, err = self.ssh.exec_command(req["command"], input=data or None, timeout=req.get("timeout"),
                                                       on_chunk=relay, cancel=cancel, started=started)
        except NotServed as exc:
            done.set()
            with sending:
                wire.send_json(conn, b"F", {"started": False, "message": str(exc)})
            return
        except ConnectionFailed as exc:
            done.set()
            with sending:
                wire.send_json(conn, b"F", {"started": started.is_set(), "message": exc.message, "hint": exc.hint})
            return
        finally:
            done.set()
        if cancel.is_set():
            return
        with sending:
            if out:
                wire.send(conn, b"O", out)
            if err:
                wire.send(conn, b"E", err)
            wire.send_json(conn, b"S", {"code": code})


    def stream(self, conn: socket.socket, req: dict) -> None:
        """A command with both directions open (rsync's remote shell, ``kept/rsh.py``):
        ``A`` once it runs, then ``I`` frames to its stdin and ``D`` for its end; its
        output comes back as ``O``/``E``, then ``S``. A caller that leaves closes it."""
        import select

        if not self.usable(conn):
            return
        try:
            chan = self.ssh._conn.transport.open_session(timeout=self.params.connect_timeout)
            chan.exec_command(req["command"])
        except Exception as exc:  # paramiko's many channel errors: nothing ran
            wire.send_json(conn, b"F", {"started": False, "message": f"no channel: {exc}"})
            return
        conn.settimeout(None)
        sending = threading.Lock()

        def feed() -> None:
            try:
                while True:
                    kind, data = wire.recv(conn)
                    if kind == b"I":
                        chan.sendall(data)
                    elif kind == b"D":
                        chan.shutdown_write()
                        return
            except Exception:  # the caller left or the link died: end the command's side
                chan.close()

        with sending:
            wire.send(conn, b"A")
        threading.Thread(target=feed, daemon=True).start()
        quiet = time.monotonic()
        try:
            while True:
                got = False
                for ready, read, kind in ((chan.recv_ready, chan.recv, b"O"),
                                          (chan.recv_stderr_ready, chan.recv_stderr, b"E")):
                    while ready():
                        data = read(65536)
                        if not data:
                            break
                        got = True
                        with sending:
                            wire.send(conn, kind, data)
                done = chan.exit_status_ready() or chan.closed
                if done and not chan.recv_ready() and not chan.recv_stderr_ready():
                    code = chan.exit_status if chan.exit_status_ready() else -1
                    with sending:
                        wire.send_json(conn, b"S", {"code": 255 if code == -1 else code})
                    return
                if got:
                    quiet = time.monotonic()
                elif time.monotonic() - quiet >= wire.HEARTBEAT_SECS:
                    quiet = time.monotonic()
                    with sending:
                        wire.send(conn, b"H")
                if not self.ssh.is_connected():
                    with sending:
                        wire.send_json(conn, b"F", {"started": True, "message": "link lost"})
                    return
                if not got:
                    select.select([chan], [], [], 0.5)
        except OSError:
            pass
        finally:
            chan.close()


def bind(sock_path: Path) -> socket.socket:
    """A listening unix socket at ``sock_path``, mode 0600 from the start."""
    with_fd = wire.socket_address(sock_path)
    address, fd = with_fd
    try:
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(address)
        finally:
            os.umask(old)
        os.chmod(address, 0o600)
        listener.listen(64)
        return listener
    finally:
        if fd is not None:
            os.close(fd)


def unbind(sock_path: Path) -> None:
    """Remove the socket file ``bind`` made (callers then find nothing there)."""
    address, fd = wire.socket_address(sock_path)
    try:
        os.unlink(address)
    except FileNotFoundError:
        pass
    finally:
        if fd is not None:
            os.close(fd)


def run(job: dict) -> int:
    params = SshParams.from_doc(job["params"])
    directory = wire.kept_dir(job["root"])
    name = wire.base_name(job.get("pod") or "pod", params.key)
    lock = open(directory / f"{name}.lock", "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another one holds this connection (or is making it)
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {time.time():.3f}\n")
    lock.flush()
    from workflow.transport.ssh import from_params

    ssh = from_params(params)
    try:
        ssh.connect()
    except PodflowError as exc:
        _log(f"cannot connect to {params.describe()}: {exc.message}")
        return 1
    sock_path = directory / f"{name}.sock"
    listener = bind(sock_path)
    server = Server(ssh, params, listener, sock_path, float(job.get("keepalive_secs") or 600))
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    _log(f"serving {params.describe()} on {sock_path.name} (keepalive {server.keepalive:g}s)")
    try:
        why = server.serve()
    finally:
        unbind(sock_path)  # from here a new caller finds no server and connects directly
        server.drain()
        listener.close()
        ssh.close()
        lock.seek(0)
        lock.truncate()
        lock.flush()
    _log(f"ended: {why}")
    return 0


def main(argv: Optional[list] = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the starting terminal is not for it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    return run(job)


if __name__ == "__main__":
    sys.exit(main())
