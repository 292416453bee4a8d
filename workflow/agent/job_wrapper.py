"""``podagent task-wrap DIR NONCE``: the process that runs one job to its end.

It runs the command in a new process group (setsid) with stdout+stderr to
``stdout.log``, refreshes ``heartbeat_at``, enforces the timeout (TERM to the whole
group, KILL after a grace period), and writes the final state with exit code and times.
Exit codes follow the shell: a command killed by signal N has ``exit_code`` 128+N, and
``signal`` N with ``signal_name`` (e.g. ``SIGABRT``) beside it. A node of a multi-node run
also runs its ``node_watch`` thread: another node's end or loss ends this one (with
that state; ``error`` says which node and why). Imports only the job modules
(and that small one), so every task starts fast.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from .fsutil import locked, utcnow, write_json_atomic
from .job_scan import job_pids, kill_marked
from .job_status import (CANCELLED, COMMAND_FILE, FAILED, FIFO_FILE, FINAL_WRITE_SECS, GRACE_SECS, HEARTBEAT_SECS,
                         LOCK_FILE, LOG_FILE, LOST, MARK_VAR, PENDING, RUNNING, START_TIMEOUT_SECS, SUCCESS,
                         TIMED_OUT, WRAPPER_LOG, boot_id, finish_fields, read_status, signal_name, status_path,
                         update_status, user_home)
from .node_watch import from_env as node_watch


def _exit_code(returncode):
    """Popen's returncode as the shell reports it (-N -> 128+N)."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def log_note(d, text):
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
        log_note(d, msg)
        update_status(d, wrapper_pid=os.getpid(), started_at=utcnow(), **finish_fields(FAILED, 127, msg))
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

    watch = node_watch(env, wake=lambda: os.kill(os.getpid(), signal.SIGCHLD))
    if watch is not None:
        watch.start()
    timeout = doc.get("timeout_secs")
    t0 = time.monotonic()
    deadline = t0 + float(timeout) if timeout else None
    next_beat = t0 + heartbeat
    reason = None  # why we stop it: (state, message)
    by_canceller = False  # ended from outside (sweep-stop, sweep.end_run, tmux gone)
    while True:
        if child.poll() is not None:
            break
        if watch is not None and watch.reason is not None:
            reason = watch.reason
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
        by_canceller = True
        if info.si_signo == signal.SIGHUP:
            reason = (LOST, "the tmux window or server was closed (SIGHUP)")
            grace = min(grace, 2.0)
        else:
            cur = read_status(d) or {}
            if cur.get("cancel_grace_secs") is not None:
                grace = float(cur["cancel_grace_secs"])
            reason = (CANCELLED, "cancelled (SIG%s)" % ("TERM" if info.si_signo == signal.SIGTERM else "INT"))
            if cur.get("cancel_state") in (FAILED, CANCELLED) and cur.get("cancel_reason"):
                reason = (cur["cancel_state"], cur["cancel_reason"])  # ended with the canceller's reason
        break

    if watch is not None and reason is not None:
        watch.ending(reason[0], reason[1])  # the other nodes end now, not after our grace
    if reason is not None:
        log_note(d, "%s: sending TERM to the process group, KILL after %ss" % (reason[1], grace))
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
        lost = watch.lost_peer() if watch is not None and state == FAILED else None
        if lost:  # a node died and took this one's collectives with it: the run is lost
            state, msg = LOST, "%s; then this node's command ended (%s)" % (lost, msg)
    else:
        state, msg = reason
    if watch is not None:
        watch.ending(state, msg)
    # The end state must land: on a full disk keep trying (a reader meanwhile sees the
    # wrapper alive, so the job is not taken for lost).
    give_up = time.monotonic() + FINAL_WRITE_SECS
    while True:
        try:
            update_status(d, **finish_fields(state, code, msg, sig))
            break
        except OSError:
            if time.monotonic() > give_up:
                raise
            time.sleep(1.0)
    if watch is not None and not by_canceller:
        watch.leave_word(d, nonce, state, msg)  # for nodes that start after this end
    return 0


def _stop_group(child, pgid, nonce, grace):
    kill_marked(nonce, signal.SIGTERM, pgid)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if child.poll() is not None and not job_pids(nonce, pgid):
            return
        signal.sigtimedwait((signal.SIGCHLD,), 0.02)
    kill_marked(nonce, signal.SIGKILL, pgid)
    child.wait()
    end = time.monotonic() + 2.0
    while job_pids(nonce, pgid) and time.monotonic() < end:
        time.sleep(0.01)
