"""``podagent serve [IDLE_SECS]``: one long-lived agent on one SSH channel.

A one-shot ``podagent OP`` pays a python start and the agent's imports (0.1-0.3 s on a
busy pod) for every command; a warm command through a kept connection should cost one
round trip. So the connection keeps agents in this mode and hands each op to an idle
one (``workflow/transport/served.py``).

On the channel: the agent writes ``READY`` and then frames (``protocol.frame``): ``H``
(JSON ``{"pid"}``) once; for each ``Q`` (the op's name, a newline, the request's JSON)
it answers ``A`` as the op starts and ``R`` with exactly the bytes a one-shot call would
have printed (the marked document). One op at a time; concurrent ops use more channels.
Nothing is kept between ops: each reads the pod's files afresh, as a one-shot call does.

It ends on EOF (the channel closed) and after IDLE_SECS with no request; an op that
blocks (``task.wait``) ends early when its caller closes the channel (``caller_gone``).
The channel's pipes are moved off fds 0-2 (now ``/dev/null``), so nothing an op starts
inherits them, and a forked child closes its copies.
"""

import io
import json
import os
import select
import sys

from .protocol import FrameReader, encode, frame

COMMAND = "serve"
#: Printed before the first frame: whatever a login shell prints before it is skipped.
READY = b"<<<PODFLOW-SERVE>>>\n"
IDLE_SECS = 900.0
#: Ops that always run in a python of their own: ``autostop.start`` forks the watchdog,
#: which is then known by that python's command line (``autostop.owner_pid``).
ONE_SHOT_OPS = ("autostop.start",)
_channel = []  # the fd requests come on, while serving


def caller_gone():
    """While an op runs in ``serve``: its caller closed the channel (a Ctrl-C, a time-out),
    so nobody will read the answer (a blocking op ends early, as a one-shot one does when
    its SSH session ends). Between ops nothing else may arrive on the channel."""
    return bool(_channel) and bool(select.select(_channel, [], [], 0)[0])


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _close(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _run(answer, payload):
    """The bytes a one-shot ``podagent OP`` prints for this ``Q`` payload."""
    op, _, raw = payload.decode("utf-8", "replace").partition("\n")
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="utf-8", errors="replace", write_through=True)
    saved = sys.stdout
    sys.stdout = out  # an op's own prints come first, as on a one-shot call's stdout
    try:
        doc = answer(op, lambda: raw)
        out.write(encode(doc))
        out.flush()
        return buf.getvalue()
    finally:
        sys.stdout = saved


def main(argv, answer):
    idle = float(argv[0]) if argv else IDLE_SECS
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.register_at_fork(after_in_child=lambda: _close(rfd, wfd))
    _channel.append(rfd)
    reader = FrameReader()
    try:
        _write_all(wfd, READY + frame(b"H", json.dumps({"pid": os.getpid()}).encode()))
        while True:
            got = reader.next()
            if got is None:
                if not select.select([rfd], [], [], idle)[0]:
                    return 0  # idle too long
                data = os.read(rfd, 65536)
                if not data:
                    return 0  # the channel closed
                reader.feed(data)
                continue
            kind, payload = got
            if kind != b"Q":
                return 2
            _write_all(wfd, frame(b"A"))
            _write_all(wfd, frame(b"R", _run(answer, payload)))
    except OSError:
        return 0  # the caller went away mid-answer
