"""Shared pieces of the fake provider APIs: an HTTP server in a thread on 127.0.0.1,
failure injection, and fake "pods" that are real loopback sshds with delayed
readiness stages (the API says running before the port opens; the port opens before
the key is authorized), as seed 001 describes real pods doing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit


@dataclass
class Timeline:
    """Seconds after creation at which each readiness stage happens (None: never)."""

    running: float = 0.05
    """the API starts saying running (endpoint known)"""
    port: Optional[float] = 0.15
    """sshd starts listening"""
    auth: Optional[float] = 0.3
    """the client key is authorized (logins work)"""
    banner: Optional[float] = None
    """sshd starts answering; from ``port`` until then the port accepts TCP and says
    nothing (a port mapping in front of a container still booting). None: the port
    opens with sshd answering"""
    gpus: Optional[float] = None
    """the pod has ``nvidia-smi``, which fails as with a driver still loading until this
    many seconds after its first call, then lists one GPU. None: no ``nvidia-smi`` (a
    CPU-only pod)"""


class SilentPort:
    """A listener on 127.0.0.1:``port`` that accepts connections and never says a word
    (no SSH banner), until ``close()`` drops them all and frees the port."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.held: List[socket.socket] = []
        self._closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._closed:
                conn.close()
                return
            self.held.append(conn)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(2)
        for conn in self.held:
            conn.close()


class FakePod:
    """One rented "pod": a real sshd (``tests/sshd.SshPod``) driven through a timeline."""

    def __init__(self, sshd, timeline: Timeline, *, key_attached: bool = True, env: Optional[Dict[str, str]] = None):
        self.sshd = sshd
        if env:
            sshd.inject_env(env)  # the provider's own variables for the pod (pod-scoped id and key)
        self.timeline = timeline
        self.created = time.time()
        self.created_mono = time.monotonic()
        self.key_ok = key_attached
        self.stopped = False
        self.destroyed = False
        self.logins_at: Optional[float] = None
        """epoch when logins started to work (the bench's starting line)"""
        self._lock = threading.Lock()
        self._timers: List[threading.Timer] = []
        self.silent: Optional[SilentPort] = None
        sshd.authorize_key(False)
        if timeline.port is not None:
            self._at(timeline.port, self._open_port)
        if timeline.port is not None and timeline.banner is not None:
            self._at(timeline.banner, self._answer)
        if timeline.gpus is not None:
            self._install_nvidia_smi(timeline.gpus)
        if timeline.auth is not None:
            self._at(timeline.auth, self._maybe_authorize)

    def _at(self, secs: float, fn: Callable) -> None:
        t = threading.Timer(max(0.0, secs - (time.monotonic() - self.created_mono)), fn)
        t.daemon = True
        self._timers.append(t)
        t.start()

    @property
    def age(self) -> float:
        return time.monotonic() - self.created_mono

    def api_running(self) -> bool:
        return not self.stopped and not self.destroyed and self.age >= self.timeline.running

    def _open_port(self) -> None:
        with self._lock:
            if self.destroyed or self.stopped:
                return
            if self.timeline.banner is not None and self.age < self.timeline.banner:
                self.silent = SilentPort(self.sshd.port)
            else:
                self.sshd.start()

    def _install_nvidia_smi(self, secs: float) -> None:
        """A fake ``nvidia-smi`` first on the pod's PATH (see ``Timeline.gpus``)."""
        bin_dir = self.sshd.dir / "bin"
        bin_dir.mkdir(mode=0o755)
        first = self.sshd.remote_dir / ".nvidia-smi-first-call"  # written as the pod user
        script = bin_dir / "nvidia-smi"
        script.write_text(
            "#!/bin/sh\n"
            f"f='{first}'\n"
            '[ -s "$f" ] || date +%s > "$f"\n'
            f'if [ $(( $(date +%s) - $(cat "$f") )) -lt {int(secs)} ]; then\n'
            "  echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\n"
            "  exit 9\n"
            "fi\n"
            'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-fake-0)"\n')
        script.chmod(0o755)
        self.sshd.prepend_path(bin_dir)

    def _answer(self) -> None:
        """The silent port becomes sshd (same port)."""
        with self._lock:
            self._silence_off()
            if not self.destroyed and not self.stopped:
                self.sshd.start()

    def _silence_off(self) -> None:
        if self.silent is not None:
            self.silent.close()
            self.silent = None

    def attach_key(self, public_key: Optional[str]) -> bool:
        """The provider got the user's key: it will be authorized at ``timeline.auth``."""
        if not public_key or public_key.split()[:2] != self.sshd.pub_key.split()[:2]:
            return False
        self.key_ok = True
        if self.timeline.auth is not None and self.age >= self.timeline.auth:
            self._maybe_authorize()
        return True

    def _maybe_authorize(self) -> None:
        with self._lock:
            if self.destroyed or not self.key_ok or self.logins_at is not None:
                return
            self.sshd.authorize_key(True)
            self.logins_at = time.time()

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            self._silence_off()
            self.sshd.stop()

    def start(self) -> None:
        with self._lock:
            self.stopped = False
            if self.timeline.port is not None:
                self.sshd.start()

    def preempt(self) -> None:
        """Preempted: the API says it stopped, its sshd is gone, and so is every process of it."""
        self.stop()
        self.sshd.drop_connections()
        for pid in self.sshd.user_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        with self._lock:
            if self.destroyed:
                return
            self.destroyed = True
            for t in self._timers:
                t.cancel()
            self._silence_off()
        self.sshd.cleanup()


class Route:
    def __init__(self, method: str, pattern: str, fn: Callable):
        self.method = method
        self.regex = re.compile("^" + pattern + "$")
        self.fn = fn


class Reply:
    def __init__(self, status: int = 200, body: Any = None, content_type: str = "application/json",
                 headers: Optional[Dict[str, str]] = None):
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers or {}


class FakeApi:
    """A threaded HTTP server answering the routes a subclass declares with ``route``.

    ``fail(method, path_regex, times, status)`` makes the next ``times`` matching
    requests fail with ``status`` (``times=None``: forever). Every request is logged in
    ``requests`` as (method, path, json body, headers)."""

    auth_header = "Authorization"

    def __init__(self, api_key: str, make_sshd: Callable[[], Any]):
        self.api_key = api_key
        self.make_sshd = make_sshd
        self.routes: List[Route] = []
        self.requests: List[Tuple[str, str, Any, Dict[str, str]]] = []
        self.failures: List[list] = []
        self.pods: Dict[str, Any] = {}
        self.lock = threading.RLock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                api._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- setup

    def route(self, method: str, pattern: str, fn: Callable) -> None:
        self.routes.append(Route(method, pattern, fn))

    def fail(self, method: str, path_regex: str, times: Optional[int] = 1, status: int = 500) -> None:
        with self.lock:
            self.failures.append([method, re.compile(path_regex), times, status])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "FakeApi":
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for pod in list(self.pods.values()):
            fp = getattr(pod, "fake", pod)
            if isinstance(fp, FakePod):
                fp.destroy()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def count(self, method: str, path_regex: str) -> int:
        rx = re.compile(path_regex)
        return sum(1 for m, p, _, _ in self.requests if m == method and rx.search(p))

    # -- serving

    def authorized(self, headers, path: str = "") -> bool:
        return headers.get(self.auth_header, "") == f"Bearer {self.api_key}"

    def unauthorized(self) -> Reply:
        return Reply(401, {"error": "unauthorized"})

    def server_error(self, status: int) -> Reply:
        return Reply(status, {"error": "internal_error", "msg": "fake outage"})

    def not_found(self, path: str) -> Reply:
        return Reply(404, {"error": "not_found", "msg": path})

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        headers = {k: v for k, v in h.headers.items()}
        with self.lock:
            self.requests.append((h.command, path, body, headers))
            reply = None
            for f in self.failures:
                if f[0] == h.command and f[1].search(path) and (f[2] is None or f[2] > 0):
                    if f[2] is not None:
                        f[2] -= 1
                    reply = self.server_error(f[3])
                    break
        if reply is None:
            if not self.authorized(h.headers, path):
                reply = self.unauthorized()
            else:
                for r in self.routes:
                    if r.method != h.command:
                        continue
                    m = r.regex.match(path)
                    if m:
                        try:
                            with self.lock:
                                reply = r.fn(body=body, query=query, **m.groupdict())
                        except Exception as exc:  # a bug in the fake: say so loudly
                            import traceback

                            reply = Reply(599, {"error": "fake_bug", "msg": traceback.format_exc()})
                        break
                else:
                    reply = self.not_found(path)
        if not isinstance(reply, Reply):
            reply = Reply(200, reply)
        data = b"" if reply.body is None or reply.status == 204 else (
            json.dumps(reply.body).encode() if not isinstance(reply.body, bytes) else reply.body)
        h.send_response(reply.status)
        h.send_header("Content-Type", reply.content_type)
        h.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            h.send_header(k, v)
        h.end_headers()
        if data:
            h.wfile.write(data)


def new_id() -> str:
    return uuid.uuid4().hex[:10]
