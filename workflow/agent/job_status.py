"""The status file of one job dir: its names, states, and atomic reads and writes.

A job dir (a tracked task under ``_tasks/<id>/``, a sweep run under
``<outputs_dir>/<run_id>/``) holds ``command.sh``, ``status.json`` and ``stdout.log``.
Everything that launches, watches, repairs or ends a job reads and writes its state
through here: every write is atomic and every read-modify-write holds ``.status.lock``.
A document with fields of the wrong type is reported corrupt, never "fixed".
"""

import os
import pwd
import re
import signal

from .fsutil import locked, parse_time, read_json, utcnow, write_json_atomic
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


def finish_fields(state, exit_code=None, error=None, sig=None):
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
