"""Prepare and launch a job: ``command.sh`` + a ``pending`` status, then its wrapper.

``prepare`` writes the command verbatim and a fresh random ``nonce``; ``launch`` starts
``podagent task-wrap <d> <nonce>`` (in a tmux window on a private socket, or detached in
its own session), hands it the command's environment through a FIFO (never a file,
never a command line), and returns once the wrapper has written ``running``. A wrapper
that does not come up is killed and its job recorded ``failed`` with the reason.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

from .fsutil import locked, utcnow, write_atomic, write_json_atomic
from .job_scan import kill_marked
from .job_status import (ACTIVE, COMMAND_FILE, FAILED, FIFO_FILE, GRACE_SECS, HEARTBEAT_SECS, LOCK_FILE, LOG_FILE,
                         PENDING, START_TIMEOUT_SECS, WRAP_COMMAND, WRAPPER_LOG, boot_id, finish_fields, read_status,
                         status_path, update_status, user_home)
from .protocol import AgentError

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Credentials of the engine itself: never handed to a job even if the agent has them.
ENGINE_SECRETS = ("REMOTE_SSH_PASSWORD", "VAST_API_KEY", "RUNPOD_API_KEY", "LIUM_API_KEY", "WF_NOTIFY_URLS")


def prepare(d, job_id, command, timeout_secs=None, workdir=None, attempt=1, extra=None):
    """Write ``command.sh`` (verbatim) and a ``pending`` status into existing dir ``d``."""
    if not isinstance(command, str) or not command.strip():
        raise AgentError("input", "the command is empty")
    if timeout_secs is not None:
        try:
            timeout_secs = float(timeout_secs)
        except (TypeError, ValueError):
            raise AgentError("input", "timeout_secs must be a number, not %r" % (timeout_secs,))
        if timeout_secs <= 0:
            raise AgentError("input", "timeout_secs must be > 0")
        if timeout_secs == int(timeout_secs):
            timeout_secs = int(timeout_secs)
    write_atomic(os.path.join(d, COMMAND_FILE), command, mode=0o644)
    with open(os.path.join(d, LOG_FILE), "ab"):
        pass
    now = utcnow()
    doc = {
        "id": job_id,
        "state": PENDING,
        "exit_code": None,
        "command": command,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "timeout_secs": timeout_secs,
        "pid": None,
        "pgid": None,
        "wrapper_pid": None,
        "heartbeat_at": None,
        "attempt": attempt,
        "workdir": workdir,
        "nonce": uuid.uuid4().hex,
        "boot_id": boot_id(),
    }
    doc.update(extra or {})
    write_json_atomic(status_path(d), doc)
    return doc


def agent_argv():
    """How to start this podagent again (the zipapp we run from, without site-packages as
    the engine starts it, or the package)."""
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if main and os.path.isfile(main) and not main.endswith(".py"):
        return [sys.executable, "-S", main]
    return [sys.executable, "-m", __package__]


def job_env(extra=None):
    """The command's environment: this agent's (the pod login's) minus tmux and engine
    secrets, plus ``extra``; ``HOME`` is the pod user's own."""
    env = dict(os.environ)
    for key in list(env):
        if key in ("TMUX", "TMUX_PANE") or key in ENGINE_SECRETS:
            del env[key]
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise AgentError("input", "invalid environment variable name %r" % (key,))
        env[key] = "" if value is None else str(value)
    env["HOME"] = user_home()
    return env


def tmux_socket_name(outputs_dir):
    import hashlib

    return "podflow-" + hashlib.sha256(outputs_dir.encode("utf-8")).hexdigest()[:12]


def _tmux_recent(exe):
    """tmux >= 3.0 (``new-window -e``, commands as argv)."""
    try:
        out = subprocess.run([exe, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout.decode("ascii", "replace")
    except OSError:
        return False
    m = re.search(r"(\d+)\.(\d+)", out)
    if not m:
        return "master" in out or "next" in out
    return int(m.group(1)) >= 3


def _tmux_start(tmux, argv, window_name, lock_path, cwd):
    """Start ``argv`` in a new window of ``tmux['session']`` on socket ``tmux['socket']``."""
    exe = shutil.which("tmux")
    if not exe or not _tmux_recent(exe):
        return None  # no tmux, or one without ``-e`` / argv commands (< 3.0): detached
    base = [exe, "-f", "/dev/null", "-L", tmux["socket"]]
    session = tmux["session"]
    eargs = []
    for key in ("HOME", "PATH", "LANG"):
        if os.environ.get(key) or key == "HOME":
            eargs += ["-e", "%s=%s" % (key, user_home() if key == "HOME" else os.environ[key])]
    fmt = ["-P", "-F", "#{window_id}"]
    devnull = subprocess.DEVNULL
    with locked(lock_path):
        has = subprocess.run(base + ["has-session", "-t", "=" + session], stdin=devnull,
                             stdout=devnull, stderr=devnull, cwd=cwd).returncode == 0
        if has:
            cmd = base + ["new-window", "-d"] + fmt + ["-t", "=" + session + ":", "-n", window_name, "-c", cwd] + eargs + argv
        else:
            cmd = base + ["new-session", "-d"] + fmt + ["-s", session, "-n", window_name, "-c", cwd,
                                                         "-x", "200", "-y", "50"] + eargs + argv
        res = subprocess.run(cmd, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    if res.returncode != 0:
        raise AgentError("start", "tmux could not start the task: %s" % res.stderr.decode("utf-8", "replace").strip())
    return res.stdout.decode("utf-8", "replace").strip()


def _die_with_parent_fn():
    """A preexec_fn making the child get SIGKILL when its parent dies (Linux prctl
    PR_SET_PDEATHSIG), or None where that is not available. Resolved before the fork."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    sig = int(signal.SIGKILL)

    def fn():
        prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG

    return fn


def _detached_start(argv, d, die_with_parent=False):
    """Start ``argv`` detached (own session). ``die_with_parent``: the process is killed
    when the starting thread's process dies (a supervisor's children go with it)."""
    preexec = _die_with_parent_fn() if die_with_parent else None
    with open(os.devnull, "rb") as null_in, open(os.path.join(d, WRAPPER_LOG), "ab") as err:
        return subprocess.Popen(argv, stdin=null_in, stdout=err, stderr=err, cwd=d, close_fds=True,
                                start_new_session=True, preexec_fn=preexec)


def _feed_fifo(fifo, payload, deadline):
    """Write ``payload`` to the wrapper through ``fifo`` once it has opened it."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.EAGAIN):
                raise
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    try:
        import fcntl

        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return True


def launch(d, env=None, tmux=None, start_timeout=START_TIMEOUT_SECS, heartbeat_secs=HEARTBEAT_SECS,
           grace_secs=GRACE_SECS, window_name=None, die_with_parent=False):
    """Start the wrapper for prepared dir ``d`` and return the status once it runs.

    ``env``: the command's full environment (see ``job_env``). ``tmux``: ``{"socket",
    "session"}`` to run in a tmux window, or None for a detached process (what a runner
    that is itself in tmux uses; ``die_with_parent``: the wrapper is SIGKILLed when the
    calling process dies, so its job reads ``lost``). Raises AgentError('start') when the wrapper does not
    come up within ``start_timeout``; the job is then recorded ``failed``.
    """
    doc = read_status(d)
    nonce = doc["nonce"]
    fifo = os.path.join(d, FIFO_FILE)
    try:
        os.unlink(fifo)
    except OSError:
        pass
    os.mkfifo(fifo, 0o600)
    argv = agent_argv() + [WRAP_COMMAND, d, nonce]
    payload = json.dumps({"nonce": nonce, "env": env if env is not None else job_env(),
                          "heartbeat_secs": heartbeat_secs, "grace_secs": grace_secs}).encode("utf-8")
    deadline = time.monotonic() + start_timeout
    window = None
    try:
        if tmux:
            window = _tmux_start(tmux, argv, window_name or doc.get("id") or "job",
                                 os.path.join(os.path.dirname(d), ".tmux.lock"), d)
        if window is None:
            _detached_start(argv, d, die_with_parent=die_with_parent)
        if window:
            update_status(d, tmux_socket=tmux["socket"], tmux_session=tmux["session"], tmux_window=window)
        if not _feed_fifo(fifo, payload, deadline):
            raise AgentError("start", "the task wrapper did not start within %ss" % start_timeout)
        while True:
            doc = read_status(d)
            if doc.get("state") != PENDING:
                return doc
            if time.monotonic() > deadline:
                raise AgentError("start", "the task wrapper did not report running within %ss" % start_timeout)
            time.sleep(0.003)
    except AgentError as exc:
        kill_marked(nonce, signal.SIGKILL)
        if window and shutil.which("tmux"):
            subprocess.run([shutil.which("tmux"), "-L", tmux["socket"], "kill-window", "-t", window],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        detail = _read_small(os.path.join(d, WRAPPER_LOG))
        with locked(os.path.join(d, LOCK_FILE)):
            cur = read_status(d) or {}
            if cur.get("state") in ACTIVE:
                cur.update(finish_fields(FAILED, None, "%s%s" % (exc.message, ("\n" + detail) if detail else "")))
                write_json_atomic(status_path(d), cur)
        raise
    finally:
        try:
            os.unlink(fifo)
        except OSError:
            pass


def _read_small(path, limit=4000):
    try:
        with open(path, "rb") as fh:
            return fh.read()[-limit:].decode("utf-8", "replace").strip()
    except (IOError, OSError):
        return ""
