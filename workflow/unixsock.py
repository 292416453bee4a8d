"""Unix sockets between processes of one user (stdlib only, nothing else imported: the
``wf`` entry uses it before anything else is loaded).

Both the kept connection (``transport/kept/``) and the warm CLI server (``cli/zygote.py``)
listen on a socket under ``.podflow/``; a caller checks that the server is its own user
(``SO_PEERCRED``), as the servers check their callers.
"""

from __future__ import annotations

import os
import socket
import struct


def peer(sock: socket.socket) -> tuple:
    """(pid, uid) of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


def socket_address(path: os.PathLike) -> tuple:
    """An address ``bind``/``connect`` accept for ``path``: unix socket paths are limited
    to 107 bytes, so a longer one goes through ``/proc/self/fd/N/`` of its directory
    (the returned fd is the caller's to close)."""
    text = os.fspath(path)
    if len(text.encode()) < 100:
        return text, None
    fd = os.open(os.path.dirname(text), os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(text)}", fd


def connect(path: os.PathLike, timeout: float) -> tuple:
    """(a connection to the server at ``path``, the server's pid); ``OSError`` when
    nothing answers there, ``PermissionError`` when the server is another user."""
    address, fd = socket_address(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
        pid, uid = peer(sock)
        if uid != os.getuid():
            raise PermissionError("the socket's server is another user")
    except OSError:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return sock, pid
