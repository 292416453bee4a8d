"""Entry point: ``python3 podagent.pyz OP`` with a JSON request on stdin.

Every op is a function ``(request: dict) -> result`` registered in a module's ``OPS``.
The answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {...}}``
between markers; the exit code is 0 either way unless the agent itself broke.
"""

import errno
import json
import sys
import traceback

from . import autostop, data, net, prepare, serve, state, sweep, tasks
from .protocol import AgentError, encode

OPS = {}
for _module in (state, tasks, sweep, data, prepare, autostop, net):
    OPS.update(_module.OPS)

#: Long-running entry points (the task wrapper, the sweep runner) take argv, not JSON.
COMMANDS = {}
for _module in (tasks, sweep, prepare):
    COMMANDS.update(getattr(_module, "COMMANDS", {}))


def os_message(exc):
    """``OSError`` as one line: what failed, on which path, and for a full disk, that."""
    text = exc.strerror or str(exc)
    if exc.filename:
        text += ": %s" % exc.filename
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text = "the pod's disk is full (%s)" % text
    return text


def answer(op, read_request):
    """The response document of one op; ``read_request()`` gives the request's JSON text
    (stdin for a one-shot call, a frame for ``serve``). Never raises for an op's error."""
    try:
        if op not in OPS:
            raise AgentError("input", "unknown podagent op %r" % op)
        raw = read_request()
        try:
            request = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise AgentError("protocol", "request is not JSON: %s" % exc)
        return {"ok": True, "result": OPS[op](request)}
    except AgentError as exc:
        return {"ok": False, "error": exc.to_doc()}
    except OSError as exc:
        # The pod's file system said no (disk full, quota, read-only, permissions): the
        # user needs the reason and the path, not a traceback.
        return {"ok": False, "error": {"kind": "os", "errno": exc.errno, "message": os_message(exc)}}
    except Exception as exc:  # noqa: BLE001 - report, never die silently
        return {"ok": False, "error": {"kind": "internal", "message": "%s: %s" % (type(exc).__name__, exc),
                                       "traceback": traceback.format_exc()[-2000:]}}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stderr.write("usage: podagent OP  (ops: %s)\n" % ", ".join(sorted(OPS)))
        return 2
    op, rest = argv[0], argv[1:]
    if op == serve.COMMAND:
        return serve.main(rest, answer)
    if op in COMMANDS:
        return COMMANDS[op](rest) or 0
    doc = answer(op, sys.stdin.read)
    sys.stdout.write(encode(doc))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
