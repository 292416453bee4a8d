"""Atomic writes, locks, JSON files and UTC times on the pod."""

import datetime
import errno
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager

from .protocol import AgentError


def utcnow():
    """UTC ISO-8601 with a ``Z``, second resolution is too coarse for waits: keep micros."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text):
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def expand(path):
    return os.path.abspath(os.path.expanduser(path))


def makedirs(path, mode=0o755):
    os.makedirs(path, mode=mode, exist_ok=True)


def write_atomic(path, data, mode=0o644):
    """Temp file in the same directory, fsync, rename: readers see old or new, never half."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    makedirs(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path, doc):
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_json(path, default=None, what="file"):
    """A JSON file's document; ``default`` when missing; AgentError('corrupt') when unparsable."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return default
        raise AgentError("io", "cannot read %s %s: %s" % (what, path, exc.strerror))
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AgentError("corrupt", "%s %s is not valid JSON (%s); it was left as it is" % (what, path, exc), path=path)
    if not isinstance(doc, dict):
        raise AgentError("corrupt", "%s %s does not hold a JSON object; it was left as it is" % (what, path), path=path)
    return doc


@contextmanager
def locked(path):
    """An exclusive ``flock`` on ``path`` (created if needed) for a read-modify-write."""
    makedirs(os.path.dirname(path) or ".")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
