"""/proc scans: is a job's wrapper alive, which processes belong to a job, kill them.

A pid alone proves nothing (pids are reused): the wrapper's command line must hold the
job's nonce, and a job's processes are found by its process group or by the marker
``PODFLOW_TASK_MARK=<nonce>`` in their environment (grandchildren that left the group).
"""

import errno
import os

from .job_status import MARK_VAR, WRAP_COMMAND, boot_id


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read()
    except (IOError, OSError):
        return None


def proc_stat(pid):
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
    st = proc_stat(int(pid))
    if st is None or st[0] in ("Z", "X"):
        return False
    cmdline = proc_cmdline(int(pid)) or b""
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
        st = proc_stat(pid)
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


def kill_marked(nonce, sig, pgid=None):
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
