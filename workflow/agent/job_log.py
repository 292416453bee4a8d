"""Read a job's ``stdout.log``: its last lines, or follow it as it grows until the job ends."""

import os
import time

from .job_control import refresh_status
from .job_status import LOG_FILE, is_terminal, read_status


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
