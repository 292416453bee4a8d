"""Entry point: ``python3 podagent.pyz OP`` with a JSON request on stdin.

Every op is a function ``(request: dict) -> result`` registered in a module's ``OPS``.
The answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {...}}``
between markers; the exit code is 0 either way unless the agent itself broke.
"""

import errno
import importlib
import json
import sys
import traceback

from . import serve
from .protocol import AgentError, encode

#: The modules that register ops (``OPS``) and long-running entry points that take argv,
#: not JSON (``COMMANDS``: the task wrapper, the sweep runner).
MODULES = ("state", "tasks", "sweep", "data", "prepare", "autostop", "net")
#: The module of each op's prefix (``sweep.status`` -> ``sweep``) and of each command: a
#: python started for one op imports only its module (all of them cost a busy pod's
#: python ~0.05-0.2 s). An op or command not listed here is looked up in every module.
OP_MODULES = {"state": "state", "task": "tasks", "sweep": "sweep", "data": "data", "run": "data",
              "prepare": "prepare", "autostop": "autostop", "net": "net"}
COMMAND_MODULES = {"task-wrap": "tasks", "node-word": "tasks", "sweep-run": "sweep", "bootstrap-run": "prepare",
                   "checkout-run": "prepare"}


def _registered(kind, module=None):
    """``OPS`` or ``COMMANDS`` of ``module``, or of every module."""
    out = {}
    for name in [module] if module else MODULES:
        out.update(getattr(importlib.import_module("." + name, __package__), kind, {}))
    return out


def find(kind, name):
    """The function of op (``kind`` ``OPS``) or command (``COMMANDS``) ``name``, or None."""
    module = (OP_MODULES.get(name.split(".", 1)[0]) if kind == "OPS" else COMMAND_MODULES.get(name))
    found = _registered(kind, module).get(name) if module else None
    return found or _registered(kind).get(name)


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
        function = find("OPS", op)
        if function is None:
            raise AgentError("input", "unknown podagent op %r" % op)
        raw = read_request()
        try:
            request = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise AgentError("protocol", "request is not JSON: %s" % exc)
        return {"ok": True, "result": function(request)}
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
        sys.stderr.write("usage: podagent OP  (ops: %s)\n" % ", ".join(sorted(_registered("OPS"))))
        return 2
    op, rest = argv[0], argv[1:]
    if op == serve.COMMAND:
        return serve.main(rest, answer)
    command = find("COMMANDS", op) if "." not in op else None  # ops are dotted (sweep.status), commands not
    if command is not None:
        return command(rest) or 0
    doc = answer(op, sys.stdin.read)
    sys.stdout.write(encode(doc))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
