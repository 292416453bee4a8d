"""Process primitives for tracked work on the pod: one directory = one job.

Any directory holding ``command.sh`` / ``status.json`` / ``stdout.log`` (a tracked task
under ``_tasks/<id>/``, a sweep run under ``<outputs_dir>/<run_id>/``) is driven by the
same code:

* ``prepare(d, id, command, ...)`` writes ``command.sh`` (the text verbatim, run by
  bash) and a ``pending`` status with a fresh random ``nonce``;
* ``launch(d, env, tmux=..., ...)`` starts ``podagent task-wrap <d> <nonce>`` (in a
  tmux window on a private socket, or detached in its own session when ``tmux`` is
  None), hands it the command's environment through a FIFO (never a file, never a
  command line), and returns once the wrapper has written ``running``;
* ``wrap_main([d, nonce])`` is the wrapper: the command in a new process group
  (setsid), stdout+stderr to ``stdout.log``, ``heartbeat_at`` refreshed, the timeout
  enforced (TERM to the whole group, KILL after a grace period), the final state with
  exit code and times;
* ``refresh_status(d)`` is the repair pass every reader runs: a pending/running job
  whose wrapper is gone (pid dead, pid reused by another process — the nonce is not in
  its command line —, or the boot id changed) becomes ``lost``, recorded under the lock,
  and processes it left behind (found by the marker in their environment) are killed;
* ``terminate(d)``, ``wait(d, secs)``, ``tail(d, n)``, ``follow(d, out, ...)``.

Every status write is atomic and every read-modify-write holds ``.status.lock``; the
wrapper writes its final state under that lock before it exits, so a reader that finds
the wrapper dead *under the lock* with a non-terminal state knows it is really lost.

Exit codes follow the shell: a command killed by signal N has ``exit_code`` 128+N, and
``signal`` N with ``signal_name`` (e.g. ``SIGABRT``) beside it.
"""

import errno
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

from .fsutil import locked, parse_time, read_json, utcnow, write_atomic, write_json_atomic
from .protocol import AgentError

STATUS_FILE = "status.json"
LOG_FILE = "stdout.log"
COMMAND_FILE = "command.sh"
LOCK_FILE = ".status.lock"
FIFO_FILE = ".env.fifo"
WRAPPER_LOG = "wrapper.log"

PENDING, RUNNING = "pending", "running"
SUCCESS, FAILED, TIMED_OUT, CANCELLED, LOST = "success", "failed", "timed_out", "cancelled", "lost"
TERMINAL = (SUCCESS, FAILED, TIMED_OUT, CANCELLED, LOST)
ACTIVE = (PENDING, RUNNING)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Environment variable carrying the job's nonce into every process it starts.
MARK_VAR = "PODFLOW_TASK_MARK"
WRAP_COMMAND = "task-wrap"

HEARTBEAT_SECS = 5.0
GRACE_SECS = 10.0
START_TIMEOUT_SECS = 15.0
#: A pending job with no wrapper after this long was never started (its launcher died).
PENDING_LOST_SECS = 60.0
#: How long the wrapper keeps retrying its final status write (e.g. on a full disk).
FINAL_WRITE_SECS = 600.0

#: Credentials of the engine itself: never handed to a job even if the agent has them.
ENGINE_SECRETS = ("REMOTE_SSH_PASSWORD", "VAST_API_KEY", "RUNPOD_API_KEY", "LIUM_API_KEY", "WF_NOTIFY_URLS")


def is_terminal(state):
    return state in TERMINAL


def validate_id(job_id, what="task id"):
    if not isinstance(job_id, str) or not ID_RE.match(job_id):
        raise AgentError("input", "invalid %s %r: must match %s" % (what, job_id, ID_RE.pattern))
    return job_id


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except (IOError, OSError):
        return None


def user_home():
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


# ---------------------------------------------------------------- status file


def status_path(d):
    return os.path.join(d, STATUS_FILE)


_TIME_FIELDS = ("created_at", "started_at", "finished_at", "heartbeat_at")
_INT_FIELDS = ("exit_code", "pid", "pgid", "wrapper_pid", "attempt")


def _malformed(doc):
    """Why ``doc`` is not a usable status document (wrong types), or None."""
    if doc.get("state") not in TERMINAL + ACTIVE:
        return "state %r is not one of %s" % (doc.get("state"), ", ".join(ACTIVE + TERMINAL))
    for key in _TIME_FIELDS:
        value = doc.get(key)
        if value is not None:
            try:
                parse_time(value)
            except (TypeError, ValueError, AttributeError):
                return "%s %r is not an ISO-8601 time" % (key, value)
    for key in _INT_FIELDS:
        value = doc.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return "%s %r is not a whole number" % (key, value)
    value = doc.get("timeout_secs")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "timeout_secs %r is not a number" % (value,)
    for key in ("id", "nonce", "boot_id", "command"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            return "%s %r is not a string" % (key, doc[key])
    return None


def read_status(d):
    """The status document of job dir ``d``, or None when there is none. A document
    with fields of the wrong type is reported corrupt (and left as it is)."""
    path = status_path(d)
    doc = read_json(path, default=None, what="status file")
    if doc is not None:
        why = _malformed(doc)
        if why:
            raise AgentError("corrupt", "status file %s is corrupt (%s); it was left as it is" % (path, why),
                             path=path)
    return doc


def update_status(d, **fields):
    """Read-modify-write ``status.json`` under the lock; returns the new document."""
    with locked(os.path.join(d, LOCK_FILE)):
        doc = read_status(d) or {}
        doc.update(fields)
        write_json_atomic(status_path(d), doc)
    return doc


def signal_name(signum):
    """``SIGABRT`` for 6; ``SIG<n>`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "SIG%d" % signum


def _finish_fields(state, exit_code=None, error=None, sig=None):
    """The end-state fields; ``sig``: the signal that killed the command (number), also
    written by name (``signal_name``)."""
    now = utcnow()
    out = {"state": state, "exit_code": exit_code, "finished_at": now, "heartbeat_at": now}
    if error:
        out["error"] = error
    if sig:
        out["signal"] = sig
        out["signal_name"] = signal_name(sig)
    return out


def duration_secs(doc):
    start = parse_time(doc.get("started_at"))
    if start is None:
        return None
    end = parse_time(doc.get("finished_at")) if doc.get("finished_at") else None
    if end is None:
        end = parse_time(utcnow())
    return round((end - start).total_seconds(), 3)


# ---------------------------------------------------------------- prepare / launch


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
    """How to start this podagent again (the zipapp we run from, or the package)."""
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if main and os.path.isfile(main) and not main.endswith(".py"):
        return [sys.executable, main]
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
        _kill_marked(nonce, signal.SIGKILL)
        if window and shutil.which("tmux"):
            subprocess.run([shutil.which("tmux"), "-L", tmux["socket"], "kill-window", "-t", window],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        detail = _read_small(os.path.join(d, WRAPPER_LOG))
        with locked(os.path.join(d, LOCK_FILE)):
            cur = read_status(d) or {}
            if cur.get("state") in ACTIVE:
                cur.update(_finish_fields(FAILED, None, "%s%s" % (exc.message, ("\n" + detail) if detail else "")))
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


# ---------------------------------------------------------------- /proc scans


def _proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read()
    except (IOError, OSError):
        return None


def _proc_stat(pid):
    """(state letter, pgrp) of a process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except (IOError, OSError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[2])
    except (IndexError, ValueError):
        return None


def wrapper_alive(doc):
    """True/False whether the job's wrapper is this job's live wrapper; None = no pid yet.

    A reused pid is not taken for the wrapper: its command line must hold our nonce,
    and the boot id must be the one the job was started under."""
    bid = doc.get("boot_id")
    if bid and boot_id() and bid != boot_id():
        return False
    pid = doc.get("wrapper_pid")
    if not pid:
        return None
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(int(pid), 0)
            return True
        except OSError as exc:
            return exc.errno == errno.EPERM
    st = _proc_stat(int(pid))
    if st is None or st[0] in ("Z", "X"):
        return False
    cmdline = _proc_cmdline(int(pid)) or b""
    nonce = (doc.get("nonce") or "").encode("ascii")
    return bool(nonce) and nonce in cmdline and WRAP_COMMAND.encode("ascii") in cmdline


def job_pids(nonce, pgid=None):
    """Live processes of a job: in its process group, or carrying its marker in their
    environment (grandchildren that left the group); never this process."""
    found = []
    mark = ("%s=%s" % (MARK_VAR, nonce)).encode("ascii") if nonce else None
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me:
            continue
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        if pgid and st[1] == pgid:
            found.append(pid)
            continue
        if mark:
            try:
                with open("/proc/%d/environ" % pid, "rb") as fh:
                    env = fh.read()
            except (IOError, OSError):
                continue
            if env.startswith(mark + b"\0") or (b"\0" + mark + b"\0") in env or env.endswith(b"\0" + mark):
                found.append(pid)
    return found


def _kill_marked(nonce, sig, pgid=None):
    """Send ``sig`` to every process of the job; returns how many were signalled."""
    pids = job_pids(nonce, pgid)
    if pgid:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return len(pids)


# ---------------------------------------------------------------- repair pass


def refresh_status(d, doc=None):
    """The job's status after the repair pass (see the module docstring)."""
    if doc is None:
        doc = read_status(d)
    if doc is None or doc.get("state") not in ACTIVE:
        return doc
    if not _looks_lost(doc):
        return doc
    with locked(os.path.join(d, LOCK_FILE)):
        doc = read_status(d)
        if doc is None or doc.get("state") not in ACTIVE or not _looks_lost(doc):
            return doc
        rebooted = bool(doc.get("boot_id") and boot_id() and doc["boot_id"] != boot_id())
        if rebooted:
            why = "the pod rebooted while the task was %s" % doc["state"]
        elif doc.get("wrapper_pid"):
            why = "the task's wrapper (pid %s) is gone without writing an end state" % doc["wrapper_pid"]
        else:
            why = "the task was never started (its launcher died)"
        left = 0 if rebooted else _kill_marked(doc.get("nonce"), signal.SIGKILL)
        if left:
            why += "; %d leftover process(es) killed" % left
        doc.update(_finish_fields(LOST, None, why))
        write_json_atomic(status_path(d), doc)
    return doc


def _looks_lost(doc):
    alive = wrapper_alive(doc)
    if alive is None:  # pending, wrapper not written yet
        created = parse_time(doc.get("created_at"))
        if created is None:
            return True
        age = (parse_time(utcnow()) - created).total_seconds()
        return age > PENDING_LOST_SECS or doc.get("state") == RUNNING
    return not alive


# ---------------------------------------------------------------- readers


def tail(d, lines=20, max_bytes=1 << 20):
    """The last ``lines`` lines of ``stdout.log`` (text)."""
    path = os.path.join(d, LOG_FILE)
    if lines is not None and lines <= 0:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if lines is None:
                fh.seek(max(0, size - max_bytes))
                return fh.read().decode("utf-8", "replace")
            chunk, data = 8192, b""
            pos = size
            while pos > 0 and data.count(b"\n") <= lines and len(data) < max_bytes:
                step = min(chunk, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
                chunk *= 2
    except (IOError, OSError):
        return ""
    keep = data.splitlines(True)[-lines:]
    return b"".join(keep).decode("utf-8", "replace")


def _stamp(d):
    try:
        st = os.stat(status_path(d))
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


def wait(d, secs, poll=0.02, check_every=0.5, abandoned=None):
    """Block until the job is terminal or ``secs`` pass; (status, finished).
    ``abandoned()`` true (e.g. the caller's connection is gone) ends the wait early."""
    deadline = time.monotonic() + max(0.0, secs)
    stamp, last_check = None, 0.0
    doc = None
    while True:
        now = time.monotonic()
        cur = _stamp(d)
        if cur != stamp or now - last_check >= check_every:
            stamp, last_check = cur, now
            doc = refresh_status(d)
            if doc is None:
                raise AgentError("input", "no such task directory %s" % d)
            if is_terminal(doc.get("state")):
                return doc, True
            if abandoned is not None and abandoned():
                return doc, False
        if now >= deadline:
            return doc, False
        time.sleep(min(poll, max(0.0, deadline - now)))


def follow(d, out, offset=None, lines=10, secs=3600.0, poll=0.05, abandoned=None):
    """Write the log to binary stream ``out`` as it grows until the job ends (or
    ``secs`` pass). Starts at byte ``offset``, or at the last ``lines`` lines.
    Returns (status, next offset, finished)."""
    path = os.path.join(d, LOG_FILE)
    if offset is None:
        start = tail(d, lines).encode("utf-8") if lines else b""
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        offset = max(0, size - len(start))
    deadline = time.monotonic() + secs
    last_check = 0.0
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            data = fh.read(1 << 16)
            if data:
                out.write(data)
                out.flush()
                offset += len(data)
                continue
            now = time.monotonic()
            doc = refresh_status(d) if now - last_check >= 0.5 else read_status(d)
            if now - last_check >= 0.5:
                last_check = now
            if doc is None or is_terminal(doc.get("state")):
                rest = fh.read()
                if rest:
                    out.write(rest)
                    out.flush()
                    offset += len(rest)
                return doc, offset, True
            if now >= deadline or (abandoned is not None and abandoned()):
                return doc, offset, False
            time.sleep(poll)


def terminate(d, grace_secs=None, wait_secs=None):
    """Cancel a job: TERM then KILL its whole process group (and marked stragglers);
    the state becomes ``cancelled``. Returns (status, was_active)."""
    doc = refresh_status(d)
    if doc is None:
        raise AgentError("input", "no such task directory %s" % d)
    if is_terminal(doc.get("state")):
        return doc, False
    # A job still pending is being launched right now: give its wrapper a moment.
    t_end = time.monotonic() + 3.0
    while doc.get("state") == PENDING and not doc.get("wrapper_pid") and time.monotonic() < t_end:
        time.sleep(0.01)
        doc = refresh_status(d)
    if is_terminal(doc.get("state")):
        return doc, False
    grace = GRACE_SECS if grace_secs is None else float(grace_secs)
    alive = wrapper_alive(doc)
    if alive:
        update_status(d, cancel_requested_at=utcnow(), cancel_grace_secs=grace)
        try:
            os.kill(int(doc["wrapper_pid"]), signal.SIGTERM)
        except OSError:
            pass
        final, done = wait(d, (grace + 5.0) if wait_secs is None else wait_secs, poll=0.01)
        if done:
            return final, True
    # The wrapper is gone or does not answer: do it here.
    _kill_marked(doc.get("nonce"), signal.SIGTERM, doc.get("pgid"))
    t_end = time.monotonic() + min(grace, 2.0)
    while job_pids(doc.get("nonce"), doc.get("pgid")) and time.monotonic() < t_end:
        time.sleep(0.02)
    _kill_marked(doc.get("nonce"), signal.SIGKILL, doc.get("pgid"))
    with locked(os.path.join(d, LOCK_FILE)):
        cur = read_status(d) or doc
        if cur.get("state") in ACTIVE:
            cur.update(_finish_fields(CANCELLED, cur.get("exit_code"), "cancelled; the wrapper did not answer"))
            write_json_atomic(status_path(d), cur)
    return cur, True


# ---------------------------------------------------------------- the wrapper


def _exit_code(returncode):
    """Popen's returncode as the shell reports it (-N -> 128+N)."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def _log_note(d, text):
    try:
        with open(os.path.join(d, LOG_FILE), "ab") as fh:
            fh.write(("[podflow] %s\n" % text).encode("utf-8"))
    except (IOError, OSError):
        pass


def _read_fifo(fifo, secs):
    """The launcher's JSON handed over the FIFO (SIGALRM bounds the wait)."""
    def _alarm(signum, frame):
        raise OSError(errno.ETIMEDOUT, "no launcher on the FIFO")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(max(1, secs)))
    try:
        with open(fifo, "rb") as fh:
            raw = fh.read()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return json.loads(raw.decode("utf-8"))


_PANE_FD = None
_SIGS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _unblock_in_child():
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def wrap_main(argv):
    """``podagent task-wrap DIR NONCE``: run the job of ``DIR`` to its end."""
    if len(argv) != 2:
        sys.stderr.write("usage: podagent task-wrap DIR NONCE\n")
        return 2
    d, nonce = os.path.abspath(argv[0]), argv[1]
    # Our own stdio away from the tmux pty (a dead pty must not break our writes), but
    # one descriptor of it kept open: tmux closes a pane whose pty nobody holds, and
    # hangs up (SIGHUP) its process.
    global _PANE_FD
    try:
        _PANE_FD = os.dup(0)
    except OSError:
        _PANE_FD = None
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        err = os.open(os.path.join(d, WRAPPER_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(err, 1)
        os.dup2(err, 2)
    except OSError:
        pass
    doc = read_status(d)
    if not doc or doc.get("nonce") != nonce:
        sys.stderr.write("task-wrap: %s does not hold the job with this nonce\n" % d)
        return 3
    try:
        hand = _read_fifo(os.path.join(d, FIFO_FILE), START_TIMEOUT_SECS + 5)
    except (OSError, ValueError) as exc:
        sys.stderr.write("task-wrap: no environment from the launcher: %s\n" % exc)
        return 3
    if hand.get("nonce") != nonce:
        return 3
    env = dict(hand.get("env") or {})
    env[MARK_VAR] = nonce
    env["WF_TASK_ID"] = str(doc.get("id"))
    env["WF_TASK_DIR"] = d
    heartbeat = float(hand.get("heartbeat_secs") or HEARTBEAT_SECS)
    grace = float(hand.get("grace_secs") if hand.get("grace_secs") is not None else GRACE_SECS)
    workdir = os.path.expanduser(doc.get("workdir") or env.get("HOME") or user_home())
    shell = "/bin/bash" if os.path.exists("/bin/bash") else (shutil.which("bash") or "/bin/sh")

    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGS)
    try:
        with open(os.devnull, "rb") as null_in, open(os.path.join(d, LOG_FILE), "ab") as log:
            child = subprocess.Popen([shell, os.path.join(d, COMMAND_FILE)], cwd=workdir, env=env,
                                     stdin=null_in, stdout=log, stderr=subprocess.STDOUT,
                                     close_fds=True, start_new_session=True, preexec_fn=_unblock_in_child)
    except OSError as exc:
        msg = "could not start the command: %s" % exc
        _log_note(d, msg)
        update_status(d, wrapper_pid=os.getpid(), started_at=utcnow(), **_finish_fields(FAILED, 127, msg))
        return 0
    pgid = child.pid
    now = utcnow()
    with locked(os.path.join(d, LOCK_FILE)):
        cur = read_status(d) or {}
        still_pending = cur.get("state") == PENDING
        if still_pending:
            cur.update(state=RUNNING, pid=child.pid, pgid=pgid, wrapper_pid=os.getpid(), started_at=now,
                       heartbeat_at=now, boot_id=boot_id(), shell=shell, workdir=workdir)
            write_json_atomic(status_path(d), cur)
    if not still_pending:  # given up on (launch timed out, cancelled): never run it
        _stop_group(child, pgid, nonce, 0.0)
        return 0

    timeout = doc.get("timeout_secs")
    t0 = time.monotonic()
    deadline = t0 + float(timeout) if timeout else None
    next_beat = t0 + heartbeat
    reason = None  # why we stop it: (state, message)
    while True:
        if child.poll() is not None:
            break
        now_m = time.monotonic()
        if deadline is not None and now_m >= deadline:
            reason = (TIMED_OUT, "timed out after %ss" % timeout)
            break
        if now_m >= next_beat:
            try:
                update_status(d, heartbeat_at=utcnow())
            except OSError:
                pass  # disk full for a moment: skip a beat, never abandon the job
            next_beat = now_m + heartbeat
        until = min(next_beat, deadline) if deadline is not None else next_beat
        info = signal.sigtimedwait(_SIGS, max(0.001, until - now_m))
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_signo == signal.SIGHUP:
            reason = (LOST, "the tmux window or server was closed (SIGHUP)")
            grace = min(grace, 2.0)
        else:
            cur = read_status(d) or {}
            if cur.get("cancel_grace_secs") is not None:
                grace = float(cur["cancel_grace_secs"])
            reason = (CANCELLED, "cancelled (SIG%s)" % ("TERM" if info.si_signo == signal.SIGTERM else "INT"))
        break

    if reason is not None:
        _log_note(d, "%s: sending TERM to the process group, KILL after %ss" % (reason[1], grace))
        _stop_group(child, pgid, nonce, grace)
    # Whatever the command left in its group (or marked) goes with it.
    if job_pids(nonce, pgid):
        _stop_group(child, pgid, nonce, min(grace, 2.0))
    returncode = child.wait()
    code = _exit_code(returncode)
    sig = -returncode if returncode < 0 else None  # killed by it (bash exec'd the command)
    if reason is None:
        state, msg = (SUCCESS, None) if code == 0 else (
            FAILED, "killed by %s" % signal_name(sig) if sig else "exit code %s" % code)
    else:
        state, msg = reason
    # The end state must land: on a full disk keep trying (a reader meanwhile sees the
    # wrapper alive, so the job is not taken for lost).
    give_up = time.monotonic() + FINAL_WRITE_SECS
    while True:
        try:
            update_status(d, **_finish_fields(state, code, msg, sig))
            break
        except OSError:
            if time.monotonic() > give_up:
                raise
            time.sleep(1.0)
    return 0


def _stop_group(child, pgid, nonce, grace):
    _kill_marked(nonce, signal.SIGTERM, pgid)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if child.poll() is not None and not job_pids(nonce, pgid):
            return
        signal.sigtimedwait((signal.SIGCHLD,), 0.02)
    _kill_marked(nonce, signal.SIGKILL, pgid)
    child.wait()
    end = time.monotonic() + 2.0
    while job_pids(nonce, pgid) and time.monotonic() < end:
        time.sleep(0.01)
