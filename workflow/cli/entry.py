"""The ``wf`` console script: hand the command to this project's warm CLI server when one
is up (``zygote.py``), else run it here (``main.py``), with no visible difference but time.

A warm command then costs the python start, one exchange on a unix socket and the op,
instead of also importing Invoke and the CLI (~0.1 s) in every process. This module is
what every ``wf`` imports first, so it imports only the standard library.

Only commands that never read stdin nor take over the terminal are served (``SERVED``):
the server's child is not in the terminal's foreground process group. Every other
command, ``--help`` and ``--list`` included, takes the normal path. ``WF_ZYGOTE=0`` in
the environment turns the warm server off for that command (neither used nor started).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

from workflow.unixsock import connect

#: The commands a warm server runs: reads and short pod-side acts that never read stdin
#: (``sweep-status --watch``, a live screen, is not served).
SERVED = frozenset({
    "fsm-status", "task-list", "task-status", "task-logs", "task-wait", "task-run", "task-kill",
    "sweep-status", "sweep-stop", "pod-status", "cost", "config-show", "config-validate", "sweep-validate",
})
#: Where the warm server of the project in the current directory listens (0700 dir).
DIR = os.path.join(".podflow", "cli")
SOCKET = "zygote.sock"
#: How long the server may take to take a command (fork it and say so) before it counts
#: as wedged: it is then killed and the command runs here.
ANSWER_SECS = 2.0
#: What the server's module is called on its command line (how a wedged one is known as ours).
SERVER_MODULE = "workflow.cli.zygote"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
_HEADER = struct.Struct("!cI")


def servable(argv: list) -> bool:
    """Whether the warm server may run ``wf <argv>`` (decided on the words alone; the
    server also checks that every task in a chain is served)."""
    if not argv or argv[0] not in SERVED or os.environ.get("WF_ZYGOTE") == "0":
        return False
    if os.environ.get("WF__POD__KEEPALIVE_SECS", "").strip() in ("0", "0.0"):
        return False  # keeping turned off for this command: nothing warm is used
    for word in argv[1:]:
        if word == "--watch" or word.startswith("--watch=") or (word[:1] == "-" and word[:2] != "--" and "w" in word):
            return False
    return True


def send(sock: socket.socket, kind: bytes, doc, fds: tuple = ()) -> None:
    body = json.dumps(doc).encode()
    data = _HEADER.pack(kind, len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    if data:
        sock.sendall(data)


def recv(sock: socket.socket, maxfds: int = 0) -> tuple[bytes, dict, list]:
    """One message (kind, JSON document, fds that came with it); ``EOFError`` when the
    other side left first."""
    buf, fds = b"", []
    while len(buf) < _HEADER.size:
        if maxfds and not fds:
            chunk, got, _flags, _addr = socket.recv_fds(sock, 65536, maxfds)
            fds += got
        else:
            chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    kind, size = _HEADER.unpack(buf[:_HEADER.size])
    body = buf[_HEADER.size:]
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return kind, json.loads(body) if size else {}, fds


def is_server(pid: int) -> bool:
    """``pid`` is a warm server of this user (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return os.stat(f"/proc/{pid}").st_uid == os.getuid() and SERVER_MODULE.encode() in fh.read()
    except OSError:
        return False


def through_server(argv: list) -> int | None:
    """Run ``wf <argv>`` in the warm server's child and return its wait status; None when
    no server took it (nothing ran: the caller runs it here)."""
    path = os.path.join(os.getcwd(), DIR, SOCKET)
    try:
        sock, server = connect(path, ANSWER_SECS)
    except OSError:
        return None
    try:
        mask = os.umask(0o077)
        os.umask(mask)
        request = {"argv": [sys.argv[0], *argv], "cwd": os.getcwd(), "env": dict(os.environ),
                   "umask": mask, "python": sys.executable}
        send(sock, b"Q", request, fds=(0, 1, 2))
        kind, doc, _ = recv(sock)
    except socket.timeout:
        sock.close()
        if is_server(server):  # wedged (stopped, or stuck): out of the way of later commands
            os.kill(server, signal.SIGKILL)
        return None
    except (OSError, EOFError, ValueError):
        sock.close()
        return None
    if kind != b"R":
        sock.close()
        return None
    return _wait(sock, int(doc["pid"]))


def _wait(sock: socket.socket, child: int) -> int:
    """The command runs in ``child`` (its own process group): pass on the signals a
    terminal or a supervisor sends this process, and wait for its wait status."""

    def forward(signum, _frame):
        try:
            os.killpg(child, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    sock.settimeout(None)
    try:
        kind, doc, _ = recv(sock)
        if kind == b"S":
            return int(doc["status"])
    except (OSError, EOFError, ValueError):
        pass
    # The server went away mid-command (killed): the command may still run; its end is
    # all that can be waited for, not its status.
    while _alive(child):
        time.sleep(0.1)
    sys.stderr.write("wf: the warm CLI server ended during the command; its exit status is unknown\n")
    return 1 << 8


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_like(status: int) -> None:
    """End this process as the command's own process ended (its code, or its signal)."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    sys.stdout.flush()
    os._exit(code)


def main() -> None:
    argv = sys.argv[1:]
    if servable(argv):
        try:
            status = through_server(argv)
        except KeyboardInterrupt:  # before the command started (its child, if any, ends with our socket)
            sys.stderr.write("interrupted\n")
            os._exit(130)
        if status is not None:
            exit_like(status)
    from workflow.cli.main import main as run_here

    try:
        run_here()
    finally:
        _leave_server()


def _leave_server() -> None:
    """After a command that reached a pod (and so keeps its connection), start the
    project's warm server unless one runs."""
    if os.environ.get("WF_ZYGOTE") == "0":
        return
    from workflow import runtime

    keep = runtime.kept_project()
    if keep is not None:
        from workflow.cli import zygote

        try:
            zygote.spawn(*keep)
        except OSError:
            pass  # a warm server is a speed-up, never a reason to fail
