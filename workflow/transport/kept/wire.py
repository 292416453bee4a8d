"""The kept connection's framing and files (stdlib only: both sides import it).

A frame is one kind byte, a 4-byte big-endian length and the payload. The caller sends
``Q`` (a JSON request) and, for ``exec`` and ``agent`` (an agent op for one of the
connection's long-lived agents, ``transport/served.py``), ``I`` (its stdin, once); the server answers
``P`` (pong, JSON), or ``O``/``E`` (stdout/stderr bytes) and ``H`` (a heartbeat while
the command is quiet) followed by ``S`` (JSON ``{"code"}``) or ``F`` (JSON
``{"message", "hint", "started"}``: the connection failed; ``started: false`` means the
command never ran and may go another way).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any, Optional, Tuple

from workflow import unixsock

_HEADER = struct.Struct("!cI")
#: The server sends a heartbeat when a command has been quiet this long; a caller that
#: hears nothing for several of these counts the kept connection as dead.
HEARTBEAT_SECS = 1.0
DIR = Path(".podflow") / "kept"


class Closed(Exception):
    """The other side went away mid-frame (or before one)."""


def send(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def send_json(sock: socket.socket, kind: bytes, doc: Any) -> None:
    send(sock, kind, json.dumps(doc).encode())


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise Closed()
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> Tuple[bytes, bytes]:
    """One frame (kind, payload); ``socket.timeout`` when the socket's time-out passes."""
    kind, size = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return kind, _recv_exact(sock, size) if size else b""


def credential() -> str:
    """A digest of the password this process would log in with (``""`` without one): a
    kept connection serves only callers that would have logged in the same way, so a
    wrong or missing password fails as it does without one. Sent over the socket only."""
    import hashlib

    password = os.environ.get("REMOTE_SSH_PASSWORD")
    return hashlib.sha256(b"podflow-kept\0" + password.encode()).hexdigest() if password else ""


def peer_uid(sock: socket.socket) -> Tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    return unixsock.peer(sock)


def kept_dir(root: os.PathLike) -> Path:
    return Path(root) / DIR


def label(pod: str) -> str:
    """A pod's name as it appears in file names."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in pod)[:32] or "pod"


def base_name(pod: str, key: str) -> str:
    return f"{label(pod)}.{key}"


def socket_address(path: Path) -> Tuple[str, Optional[int]]:
    """See ``workflow.unixsock.socket_address`` (paths past 107 bytes)."""
    return unixsock.socket_address(path)


def connect(path: Path, timeout: float) -> socket.socket:
    """A unix connection to the server at ``path``, whose peer must be this uid
    (``OSError`` otherwise, or when nothing answers there)."""
    return unixsock.connect(path, timeout)[0]
