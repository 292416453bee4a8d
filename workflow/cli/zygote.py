"""The warm CLI server ("zygote"): ``python -m workflow.cli.zygote``, one per project.

It imports the CLI once (Invoke, the task collection, the config loader and the modules
a warm command uses) and then never runs a command itself: per request (from
``entry.py``, on ``.podflow/cli/zygote.sock``) it receives argv, cwd, umask, the
environment and the caller's fds 0/1/2 (``SCM_RIGHTS``), forks, and the child runs the
program exactly as ``wf`` would in a process of its own, in its own process group, with
the caller's fds, directory and environment. The caller forwards its signals to that
group and gets the child's wait status when it ends; a caller that goes away (its end of
the socket hangs up) has its child ended (SIGHUP, then SIGKILL).

Single-threaded (a fork copies only the calling thread; it refuses to fork if any other
thread exists). It ends by itself, and refuses the next command (which then runs in its
own process: only slower), when a source file it imported or the python changed, after
``pod.keepalive_secs`` idle, on ``wf disconnect`` and ``pod-down``, and on SIGTERM. It is
started by a command that reached a pod (as the kept connection is), never by ``--help``.
It holds nothing secret: its own environment is stripped to the locale and python's
variables; a command's environment reaches only that command's child, over the 0600
socket of a 0700 directory, from a caller of the same uid (``SO_PEERCRED``).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from workflow import unixsock
from workflow.cli import entry
from workflow.transport.kept.server import bind, unbind

#: Modules a warm command needs beyond the CLI itself, imported once here.
#: (No module of the package reads the environment when imported: a child's own
#: environment is what every command sees.)
PRELOAD = (
    "workflow.cli.main", "workflow.config.loader", "workflow.config.envfile", "workflow.config.validmemo",
    "workflow.config.yamlfile", "workflow.runtime", "workflow.session", "workflow.pool", "workflow.providers",
    "workflow.agent_client", "workflow.fsm", "workflow.tracked", "workflow.transport.kept.client",
    "workflow.transport.params", "workflow.transport.sshconfig", "workflow.sweep.pooled", "workflow.sweep.control",
    "workflow.results.watch", "workflow.money.spend",
)
#: Variables that shape the interpreter's start (stdio encoding, hashing, warnings...):
#: a caller whose values differ runs its command itself.
_INTERPRETER_ENV = ("LANG", "LC_ALL", "LC_CTYPE")
#: After SIGHUP, how long a child whose caller left has before SIGKILL.
HANGUP_GRACE_SECS = 5.0
LOCK = "zygote.lock"
LOG = "zygote.log"


def _log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {text}\n")
    sys.stderr.flush()


def _interpreter_env(env) -> Dict[str, str]:
    return {k: v for k, v in env.items()
            if k in _INTERPRETER_ENV or (k.startswith("PYTHON") and k != "PYTHONPATH")}


def server_dir(root: os.PathLike) -> Path:
    return Path(root) / entry.DIR


def running(root: os.PathLike) -> Optional[int]:
    """The pid of this project's warm server, or None."""
    from workflow.transport.kept.client import _owner

    return _owner(server_dir(root) / LOCK)[0]


def spawn(root: os.PathLike, keepalive_secs: float) -> bool:
    """Start the project's warm server unless one runs (or ``keepalive_secs`` is 0)."""
    if keepalive_secs <= 0:
        return False
    d = server_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    if running(root) is not None:
        return False
    import subprocess

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME") or k in _interpreter_env(os.environ)}
    pkg_parent = str(Path(__file__).resolve().parents[2])  # where ``workflow`` imports from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH")) if p)
    log_fd = os.open(d / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", entry.SERVER_MODULE], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=log_fd, cwd="/", env=env,
                                start_new_session=True)
    finally:
        os.close(log_fd)
    proc.stdin.write(json.dumps({"root": str(Path(root).resolve()), "keepalive_secs": keepalive_secs,
                                 "interpreter_env": _interpreter_env(os.environ)}).encode())
    proc.stdin.close()
    return True


def stop(root: os.PathLike) -> bool:
    """End the project's warm server now (it finishes the commands it runs); whether one ran."""
    pid = running(root)
    if pid is None:
        return False
    if pid > 0 and entry.is_server(pid):
        os.kill(pid, signal.SIGTERM)
    return True


def kill(root: os.PathLike) -> None:
    """SIGKILL the project's warm server (a test's teardown)."""
    pid = running(root)
    if pid and pid > 0 and entry.is_server(pid):
        os.kill(pid, signal.SIGKILL)


def _stamps(files: Sequence[str]) -> Dict[str, Optional[Tuple[int, int]]]:
    stamps = {}
    for f in files:
        try:
            st = os.stat(f)
            stamps[f] = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamps[f] = None
    return stamps


class _Child:
    """One command running in a forked child."""

    def __init__(self, pid: int, pidfd: int, conn: socket.socket, argv: List[str]):
        self.pid, self.pidfd, self.conn, self.argv = pid, pidfd, conn, argv
        self.hung_up: Optional[float] = None


class Zygote:
    """Serves one project (see the module docstring)."""

    def __init__(self, listener: socket.socket, sock_path: Path, keepalive: float, interpreter_env: Dict[str, str], lock):
        self.listener, self.sock_path, self.lock = listener, sock_path, lock
        self.keepalive = keepalive
        self.interpreter_env = interpreter_env
        self.children: Dict[int, _Child] = {}  # by pidfd
        self.last_used = time.monotonic()
        self.stopping: Optional[str] = None
        self.told: Optional[str] = None  # set by SIGTERM's handler; the loop stops
        files = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
        from workflow.config.schema import SCHEMA_PATH

        self.sources = sorted({f for f in files if f and f.endswith(".py")} | {sys.executable, str(SCHEMA_PATH)})
        self.stamps = _stamps(self.sources)
        self.served = 0
        wake_r, self.wake_w = os.pipe()
        self.wake_r = wake_r
        os.set_blocking(self.wake_w, False)

    def stop(self, why: str) -> None:
        """Take no more commands; end once the running ones have."""
        if self.stopping is None:
            self.stopping = why
            self.listener.close()
            unbind(self.sock_path)

    # -- the loop

    def serve(self) -> str:
        while True:
            if self.told is not None:
                self.stop(self.told)
            if self.stopping is not None and not self.children:
                return self.stopping
            if (self.stopping is None and not self.children
                    and time.monotonic() - self.last_used >= self.keepalive):
                return f"idle {self.keepalive:g}s"
            watched = [self.wake_r, *self.children, *(c.conn for c in self.children.values() if c.hung_up is None)]
            if self.stopping is None:
                watched.append(self.listener)
            try:
                ready, _, _ = select.select(watched, [], [], 0.5)
            except InterruptedError:
                continue
            for item in ready:
                if item is self.listener:
                    self.accept()
                elif item == self.wake_r:
                    os.read(self.wake_r, 64)
                elif isinstance(item, int):
                    self.reap(self.children.pop(item))
                else:
                    self.caller_spoke(item)
            now = time.monotonic()
            for child in self.children.values():
                if child.hung_up is not None and now - child.hung_up > HANGUP_GRACE_SECS:
                    _signal_group(child.pid, signal.SIGKILL)

    def reap(self, child: _Child) -> None:
        _, status = os.waitpid(child.pid, 0)
        os.close(child.pidfd)
        self.last_used = time.monotonic()
        try:
            entry.send(child.conn, b"S", {"status": status})
        except OSError:
            pass
        child.conn.close()

    def caller_spoke(self, conn: socket.socket) -> None:
        """A caller only ever hangs up (Ctrl-C and the like reach its child directly)."""
        child = next((c for c in self.children.values() if c.conn is conn), None)
        if child is None:  # reaped in this same round: its caller has its status already
            return
        try:
            data = conn.recv(1)
        except OSError:
            data = b""
        if not data:
            child.hung_up = time.monotonic()
            _log(f"the caller of {' '.join(child.argv[1:2])} (child {child.pid}) left: ending it")
            _signal_group(child.pid, signal.SIGHUP)

    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: List[int] = []
        try:
            pid, uid = unixsock.peer(conn)
            if uid != os.getuid():
                _log(f"refused a caller of uid {uid} (pid {pid})")
                conn.close()
                return
            conn.settimeout(entry.ANSWER_SECS)
            kind, req, fds = entry.recv(conn, maxfds=3)
            why = self.refusal(kind, req, fds)
            if why is not None:
                entry.send(conn, b"N", {"why": why})
                conn.close()
                return
            conn.settimeout(None)
            self.fork(conn, req, fds)
        except (OSError, EOFError, ValueError, KeyError) as exc:
            _log(f"a request failed: {exc!r}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def refusal(self, kind: bytes, req: dict, fds: List[int]) -> Optional[str]:
        """Why this request must run in a process of its own (None: it runs here)."""
        if kind != b"Q" or len(fds) != 3:
            return "not a command"
        if req.get("python") != sys.executable:
            return "another python"
        if _interpreter_env(req["env"]) != self.interpreter_env:
            return "another interpreter environment"
        if _stamps(self.sources) != self.stamps:
            self.stop("a source file or the python changed")
            return self.stopping
        if threading.active_count() != 1:
            return "threads exist"
        from workflow.cli import ns

        argv = req["argv"][1:]
        others = [w for w in argv if w in ns.task_names and w not in entry.SERVED]
        if not entry.servable(argv) or others:
            return "not served"
        return None

    def fork(self, conn: socket.socket, req: dict, fds: List[int]) -> None:
        """Fork the command's child. It starts the command only once its caller was told
        (``R``): a caller that gives up waiting runs the command itself, so a server
        stopped or killed in between must leave no second run behind."""
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 70  # EX_SOFTWARE: it could not become the command (said on stderr)
            try:
                os.close(go_w)
                told = os.read(go_r, 1)
                os.close(go_r)
                if not told:
                    os._exit(code)  # the caller never heard of it: it runs the command itself
                code = self.become(conn, req, fds)
            except BaseException:  # noqa: BLE001 -- said, then this process ends
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # it did so itself already
        os.close(go_r)
        try:
            pidfd = os.pidfd_open(pid)
            self.children[pidfd] = _Child(pid, pidfd, conn, req["argv"])
            entry.send(conn, b"R", {"pid": pid})
            os.write(go_w, b"1")
        finally:
            os.close(go_w)
        self.served += 1
        _log(f"serving {' '.join(req['argv'][1:2])} (child {pid}; {self.served} served)")

    # -- in the child

    def become(self, conn: socket.socket, req: dict, fds: List[int]) -> int:
        """Turn this forked child into the caller's ``wf`` process and run the command."""
        os.setpgid(0, 0)
        for child in self.children.values():
            child.conn.close()
            os.close(child.pidfd)
        conn.close()
        self.listener.close()
        self.lock.close()  # the server's lock is its own, not its children's
        signal.set_wakeup_fd(-1)
        os.close(self.wake_r)
        os.close(self.wake_w)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT, signal.SIGWINCH):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        os.chdir(req["cwd"])
        os.umask(int(req["umask"]))
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = list(req["argv"])
        _fresh_stdio()
        from workflow.cli.main import main

        code = _run_like_python(main)
        from workflow import runtime

        keep = runtime.kept_project()
        if keep is not None and keep[1] <= 0:
            os.kill(os.getppid(), signal.SIGTERM)  # keeping turned off: no warm server either
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            code = 128 - code
        return code


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _fresh_stdio() -> None:
    """sys.stdin/stdout/stderr on the caller's fds, buffered as Python buffers its own:
    stdout line-buffered on a terminal, block-buffered on a pipe or file; stderr
    line-buffered."""
    for fd, name, mode in ((0, "stdin", "rb"), (1, "stdout", "wb"), (2, "stderr", "wb")):
        old = getattr(sys, f"__{name}__")
        raw = io.FileIO(fd, mode, closefd=False)
        if mode == "rb":
            buffered = io.BufferedReader(raw)
            line = False
        else:
            buffered = io.BufferedWriter(raw)
            line = fd == 2 or raw.isatty()
        stream = io.TextIOWrapper(buffered, encoding=old.encoding, errors=old.errors, newline="\n",
                                  line_buffering=line)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_like_python(main) -> int:
    """Run ``main()`` and end as the interpreter would: the exit code from ``SystemExit``,
    a traceback and 1 for an uncaught error, death by SIGINT for an uncaught Ctrl-C
    (a negative result); then non-daemon threads joined, ``atexit`` run, stdio flushed."""
    import atexit
    import traceback

    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code & 0xFF
        else:
            sys.stderr.write(f"{exc.code}\n")
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 -- as the interpreter reports any other
        traceback.print_exc()
        code = 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout and code == 0:
                code = 120  # as Python does when stdout cannot be flushed at exit
    return code


# -- the process


def _parse_config_ahead(root: Path) -> None:
    """The project's YAML parsed once here; a command whose file holds the same text uses
    it (``yamlfile.parse_ahead``), any other text is parsed as usual."""
    from workflow.config.loader import DEFAULT_CONFIG
    from workflow.config.yamlfile import YamlSyntaxError, parse_ahead

    try:
        parse_ahead((root / DEFAULT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YamlSyntaxError):
        pass


def run(job: dict) -> int:
    directory = server_dir(job["root"])
    lock = open(directory / LOCK, "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another one serves this project
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {time.time():.3f}\n")
    lock.flush()
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from workflow.cli import ns
    from workflow.config import schema

    ns.task_names  # noqa: B018 -- computed once here, not in every child
    schema.schema()  # read once here (and watched below with the sources)
    _parse_config_ahead(Path(job["root"]))
    import gc

    gc.freeze()  # what it imported is never collected: a child's collections leave those pages shared
    sock_path = directory / entry.SOCKET

    listener = bind(sock_path)
    zygote = Zygote(listener, sock_path, float(job["keepalive_secs"]), dict(job.get("interpreter_env") or {}), lock)
    signal.set_wakeup_fd(zygote.wake_w)
    signal.signal(signal.SIGTERM, lambda *_: setattr(zygote, "told", "told to stop"))
    _log(f"serving the CLI on {sock_path} (keepalive {zygote.keepalive:g}s, {len(zygote.sources)} files watched)")
    try:
        why = zygote.serve()
    finally:
        if zygote.stopping is None:
            listener.close()
        unbind(sock_path)
        lock.seek(0)
        lock.truncate()
        lock.flush()
    _log(f"ended: {why}")
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the starting terminal is not for it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return run(job)


if __name__ == "__main__":
    sys.exit(main())
