"""The workflow state file on the pod: read, and compare-and-set transitions under a lock.

The engine decides *whether* a transition is legal (``workflow.fsm`` with
``transitions``); this module makes the write safe: the current state is re-read under
an exclusive lock and the write happens only if it is still one the caller expected,
so two writers at once never lose an update. A corrupt file is reported, never replaced.
"""

import getpass
import os
import socket

from .fsutil import expand, locked, read_json, utcnow, write_json_atomic
from .protocol import AgentError

INITIAL = "INIT"


def state_path(request):
    custom = request.get("state_file")
    if custom:
        return expand(custom)
    return os.path.join(expand(request["outputs_dir"]), "_control", "workflow_state.json")


def _load(path):
    doc = read_json(path, default=None, what="state file")
    if doc is None:
        return {"state": INITIAL, "updated_at": None, "history": [], "exists": False}
    if not isinstance(doc.get("state"), str) or not isinstance(doc.get("history", []), list):
        raise AgentError("corrupt", "state file %s lacks a 'state' string or a 'history' list; it was left as it is" % path, path=path)
    doc.setdefault("history", [])
    doc["exists"] = True
    return doc


def read_state(request):
    doc = _load(state_path(request))
    doc["path"] = state_path(request)
    return doc


def transition(request):
    """``{to, trigger, expect: [states] | null, enforce, by, reason}`` -> the new document.

    With ``expect`` set and the current state not in it: refused when ``enforce``,
    otherwise done and a ``warning`` returned.
    """
    path = state_path(request)
    with locked(path + ".lock"):
        doc = _load(path)
        current = doc["state"]
        expect = request.get("expect")
        warning = None
        if expect is not None and current not in expect:
            if request.get("enforce", True):
                raise AgentError("refused", "state is %s" % current, current=current, allowed=list(expect))
            warning = "state machine not enforced: '%s' ran from %s (allowed: %s)" % (
                request.get("trigger"), current, ", ".join(expect))
        entry = {
            "from": current,
            "to": request["to"],
            "trigger": request.get("trigger"),
            "at": utcnow(),
            "by": request.get("by") or "%s@%s" % (getpass.getuser(), socket.gethostname()),
        }
        if request.get("reason"):
            entry["reason"] = request["reason"]
        extra = request.get("set") or {}
        new = {k: v for k, v in doc.items() if k not in ("exists", "path")}
        new.update(extra)
        new["state"] = request["to"]
        new["updated_at"] = entry["at"]
        new["history"] = doc["history"] + [entry]
        write_json_atomic(path, new)
    new["path"] = path
    if warning:
        new["warning"] = warning
    return new


def update_fields(request):
    """Set extra fields (e.g. ``checkout_sha``) without moving the state."""
    path = state_path(request)
    with locked(path + ".lock"):
        doc = _load(path)
        new = {k: v for k, v in doc.items() if k not in ("exists", "path")}
        new.update(request.get("set") or {})
        if not doc["exists"]:
            new["updated_at"] = utcnow()
        write_json_atomic(path, new)
    return new


OPS = {"state.read": read_state, "state.transition": transition, "state.update": update_fields}
