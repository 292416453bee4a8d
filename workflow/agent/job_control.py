"""Watch and end a job: the repair pass, waiting for the end, cancelling.

``refresh_status`` is the repair pass every reader runs: a pending/running job whose
wrapper is gone (pid dead, pid reused by another process — the nonce is not in its
command line —, or the boot id changed) becomes ``lost``, recorded under the lock, and
processes it left behind are killed. The wrapper writes its final state under that lock
before it exits, so a reader that finds the wrapper dead *under the lock* with a
non-terminal state knows it is really lost.
"""

import os
import signal
import time

from .fsutil import locked, parse_time, utcnow, write_json_atomic
from .job_scan import job_pids, kill_marked, wrapper_alive
from .job_status import (ACTIVE, CANCELLED, GRACE_SECS, LOCK_FILE, LOST, PENDING, PENDING_LOST_SECS, RUNNING,
                         boot_id, finish_fields, is_terminal, read_status, status_path, update_status)
from .protocol import AgentError


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
        left = 0 if rebooted else kill_marked(doc.get("nonce"), signal.SIGKILL)
        if left:
            why += "; %d leftover process(es) killed" % left
        doc.update(finish_fields(LOST, None, why))
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


def terminate(d, grace_secs=None, wait_secs=None, end=None):
    """Cancel a job: TERM then KILL its whole process group (and marked stragglers);
    the state becomes ``cancelled``, or ``end = (state, why)`` (a multi-node run's node
    ended because another node could not start). Returns (status, was_active)."""
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
        update_status(d, cancel_requested_at=utcnow(), cancel_grace_secs=grace,
                      **({"cancel_state": end[0], "cancel_reason": end[1]} if end else {}))
        try:
            os.kill(int(doc["wrapper_pid"]), signal.SIGTERM)
        except OSError:
            pass
        final, done = wait(d, (grace + 5.0) if wait_secs is None else wait_secs, poll=0.01)
        if done:
            return final, True
    # The wrapper is gone or does not answer: do it here.
    kill_marked(doc.get("nonce"), signal.SIGTERM, doc.get("pgid"))
    t_end = time.monotonic() + min(grace, 2.0)
    while job_pids(doc.get("nonce"), doc.get("pgid")) and time.monotonic() < t_end:
        time.sleep(0.02)
    kill_marked(doc.get("nonce"), signal.SIGKILL, doc.get("pgid"))
    with locked(os.path.join(d, LOCK_FILE)):
        cur = read_status(d) or doc
        if cur.get("state") in ACTIVE:
            cur.update(finish_fields(end[0] if end else CANCELLED, cur.get("exit_code"),
                                     (end[1] + "; " if end else "cancelled; ") + "the wrapper did not answer"))
            write_json_atomic(status_path(d), cur)
    return cur, True
