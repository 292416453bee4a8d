"""bootstrap and checkout on the pod: the ops behind ``wf bootstrap`` and ``wf checkout``.

The engine (``workflow.prepare``) builds a non-secret spec from the config and calls
``prepare.start``: the spec is written to ``_control/specs/<task_id>.json`` and a
tracked task (``tasks.run``) runs ``podagent bootstrap-run SPEC`` (``bootstrap``) or
``checkout-run SPEC`` (``checkout``); both run in the frame of ``step_runner``, which
writes ``result.json`` and moves the state machine only when every step succeeded.
``prepare.result`` reads that back with the task's status.

Secrets never pass through here: the spec holds config values only; anything secret
reaches the task through its environment (the FIFO of ``procs.launch``).
"""

import json
import os
import shlex

from . import procs, tasks
from .bootstrap import bootstrap_main
from .checkout import checkout_main
from .fsutil import expand, read_json, write_atomic
from .protocol import AgentError
from .step_runner import KINDS, RESULT_FILE, TAIL_LINES


def _active_same_kind(root, kind):
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return None
    for name in sorted(names):
        if not name.startswith(kind + "-") or not procs.ID_RE.match(name):
            continue
        try:
            doc = procs.refresh_status(os.path.join(root, name))
        except AgentError:
            continue
        if doc and doc.get("state") in procs.ACTIVE:
            return name
    return None


def start(request):
    """``{kind, id, spec, env, session, timeout_secs}`` -> the task's status (running).

    Writes the spec to ``_control/specs/<id>.json`` and starts the tracked task
    ``<id>`` (``-2``, ``-3``... appended when the id is taken)."""
    kind = request.get("kind")
    if kind not in KINDS:
        raise AgentError("input", "unknown prepare kind %r" % (kind,))
    spec = request.get("spec")
    if not isinstance(spec, dict):
        raise AgentError("input", "spec must be a mapping")
    base = procs.validate_id(request.get("id"))
    outputs = expand(request["outputs_dir"])
    root = os.path.join(outputs, "_tasks")
    busy = _active_same_kind(root, kind)
    if busy:
        raise AgentError("input", "%s task '%s' is still running on the pod; wait for it (wf task-wait --id %s) "
                                  "or stop it (wf task-kill --id %s)" % (kind, busy, busy, busy))
    for n in range(1, 50):
        task_id = base if n == 1 else "%s-%d" % (base, n)
        if os.path.lexists(os.path.join(root, task_id)):
            continue
        spec_path = os.path.join(outputs, "_control", "specs", task_id + ".json")
        full = dict(spec, kind=kind, task_id=task_id, outputs_dir=outputs, state_file=request.get("state_file"),
                    task_dir=os.path.join(root, task_id))
        write_atomic(spec_path, json.dumps(full, indent=2, sort_keys=True) + "\n", mode=0o600)
        command = "exec " + " ".join(shlex.quote(a) for a in procs.agent_argv() + [KINDS[kind], spec_path])
        task_request = {"outputs_dir": outputs, "id": task_id, "command": command, "env": request.get("env") or {},
                        "session": request.get("session"), "timeout_secs": request.get("timeout_secs")}
        try:
            return tasks.run(task_request)
        except AgentError as exc:
            if exc.extra.get("exists"):
                continue
            raise
    raise AgentError("input", "no free task id for %s" % base)


def result(request):
    """``{id, tail}`` -> ``{"status": ..., "result": result.json or None}``."""
    d = tasks.task_dir(request)
    doc = procs.refresh_status(d)
    status = dict(doc)
    status["dir"] = d
    status["duration_secs"] = procs.duration_secs(doc)
    status["log_tail"] = procs.tail(d, request.get("tail") or TAIL_LINES)
    return {"status": status, "result": read_json(os.path.join(d, RESULT_FILE), default=None, what="result file")}


OPS = {"prepare.start": start, "prepare.result": result}
COMMANDS = {KINDS["bootstrap"]: bootstrap_main, KINDS["checkout"]: checkout_main}
