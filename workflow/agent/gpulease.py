"""Pod-wide GPU leases: a run never gets a GPU that another sweep or user holds.

Seed 004's multi-agent rule ("read the status file, register yourself") is racy; here a
GPU is held by an exclusive ``flock`` on ``<lease dir>/gpu-<id>.lock``, taken by the
sweep runner for as long as its run uses that GPU. The kernel drops the lock when the
holder dies, so a crashed runner never leaves a GPU reserved. The lease dir is shared by
every user of the pod (``/tmp/podflow-gpu-leases``, mode 1777; ``PODFLOW_GPU_LEASE_DIR``
overrides it).
"""

import errno
import fcntl
import glob
import json
import os
import stat
import time

DEFAULT_DIR = "/tmp/podflow-gpu-leases"
#: A GPU just given back is not taken again for this long while another holder waits,
#: so two sweeps sharing GPUs take turns instead of one starving the other.
COURTESY_SECS = 0.6
#: A waiter's mark older than this is stale (its runner died).
WAIT_MARK_SECS = 3.0


def lease_dir():
    return os.environ.get("PODFLOW_GPU_LEASE_DIR") or DEFAULT_DIR


def _ensure_dir(path):
    try:
        os.mkdir(path, 0o777)
        os.chmod(path, 0o777 | stat.S_ISVTX)  # sticky, writable by every pod user
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise


def _open_lock(path):
    """Open ``path`` for locking, creating it readable/writable by all. An existing file of
    another user is opened without O_CREAT (``fs.protected_regular`` refuses O_CREAT on
    other users' files in a sticky directory)."""
    while True:
        try:
            return os.open(path, os.O_RDWR)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            os.fchmod(fd, 0o666)
            return fd
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise


class GpuLeases(object):
    """The leases one process holds; ``take`` is all-or-nothing."""

    def __init__(self, holder, directory=None):
        self.holder = holder  # non-secret facts written into the lock file, for humans
        self.directory = directory or lease_dir()
        self.fds = {}
        self.released_at = {}
        self.token = "%s-%d" % (holder.get("sweep_id", "x"), os.getpid())
        self._mark = os.path.join(self.directory, "waiting-%s" % self.token)

    def _others_waiting(self):
        now = time.time()
        for path in glob.glob(os.path.join(self.directory, "waiting-*")):
            if path == self._mark:
                continue
            try:
                if now - os.stat(path).st_mtime < WAIT_MARK_SECS:
                    return True
            except OSError:
                pass
        return False

    def waiting(self, flag):
        """Say (by a fresh mark file) that this holder waits for GPUs others hold."""
        try:
            if flag:
                _ensure_dir(self.directory)
                with open(self._mark, "w"):
                    pass
            elif os.path.exists(self._mark):
                os.unlink(self._mark)
        except OSError:
            pass

    def take(self, candidates, need):
        """``need`` GPU ids from ``candidates`` (in order) that nobody holds, now locked by
        us; None when fewer than ``need`` are free pod-wide."""
        if need <= 0:
            return []
        _ensure_dir(self.directory)
        now, polite = time.time(), None
        got = []
        for gpu in candidates:
            if gpu in self.fds:
                continue
            if now - self.released_at.get(gpu, 0) < COURTESY_SECS:
                polite = self._others_waiting() if polite is None else polite
                if polite:
                    continue
            fd = _open_lock(os.path.join(self.directory, "gpu-%s.lock" % gpu))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.fds[gpu] = fd
            got.append(gpu)
            info = dict(self.holder, gpu=gpu, pid=os.getpid())
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode("utf-8"), 0)
            except OSError:
                pass  # the lock is what counts; the note is for humans
            if len(got) == need:
                return got
        self.release(got)
        return None

    def release(self, gpus):
        for gpu in gpus:
            fd = self.fds.pop(gpu, None)
            if fd is not None:
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                self.released_at[gpu] = time.time()
