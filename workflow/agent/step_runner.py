"""The step runner behind ``podagent bootstrap-run`` and ``checkout-run``.

Each prints its progress (lines starting with ``MILESTONE`` are the milestones;
everything else is detail, e.g. git's own output), runs its commands without a shell,
writes ``result.json`` into its task dir, and — only when every step succeeded — moves
the state machine itself with a compare-and-set (``state.transition`` expecting the
state the engine saw). So a detached run and an attached one end the same way, and a
failure never moves the state. ``run_main`` is that common frame; a failing step raises
``StepFailed`` with what failed, why, what to do and the output that shows it.
"""

import collections
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager

from . import state
from .fsutil import expand, read_json, utcnow, write_json_atomic
from .protocol import AgentError

#: Lines of the task log that are milestones (``workflow.progress.MILESTONE_PREFIX``).
MILESTONE = "==> "
RESULT_FILE = "result.json"
TAIL_LINES = 30

KINDS = {"bootstrap": "bootstrap-run", "checkout": "checkout-run"}


class StepFailed(Exception):
    """A step failed: what failed, why, what to do, and the output that shows it."""

    def __init__(self, message, hint=None, tail=None):
        Exception.__init__(self, message)
        self.message, self.hint, self.tail = message, hint, tail


def mask_url(url):
    """``https://user:token@host/x`` -> ``https://***@host/x`` for printing."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", url or "")


class Runner:
    """Prints progress, runs commands with their output streamed to the task log, and
    records each step for ``result.json``."""

    def __init__(self, spec, out=None):
        self.spec = spec
        self.out = out or sys.stdout
        self.steps = []
        self.current = None
        self.notes = []

    def say(self, text):
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()

    def milestone(self, text):
        self.say(MILESTONE + text)

    @contextmanager
    def step(self, name, text):
        self.current = name
        self.milestone("%s: %s" % (name, text))
        t0 = time.monotonic()
        entry = {"name": name, "ok": False}
        self.steps.append(entry)
        yield entry
        entry["ok"] = True
        entry["secs"] = round(time.monotonic() - t0, 3)

    def run(self, argv, cwd=None, env=None, show=True, capture=False, check=True, what=None, hint=None):
        """Run ``argv`` (no shell); its output goes to the log as it comes (``show``).
        Returns ``(exit_code, output)``; a non-zero exit raises StepFailed when ``check``."""
        if show:
            self.say("$ " + " ".join(shlex.quote(mask_url(a)) for a in argv))
        full_env = dict(os.environ)
        full_env.update(env or {})
        tail = collections.deque(maxlen=TAIL_LINES)
        chunks = []
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            if check:
                raise StepFailed("%s: cannot run %s: %s" % (what or argv[0], argv[0], exc.strerror), hint=hint)
            return 127, ""
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            tail.append(line.rstrip("\n"))
            if capture:
                chunks.append(line)
            if show:
                self.out.write(line if line.endswith("\n") else line + "\n")
                self.out.flush()
        proc.stdout.close()
        code = proc.wait()
        code = 128 - code if code < 0 else code
        if code != 0 and check:
            raise StepFailed("%s failed (exit %d)" % (what or " ".join(argv[:2]), code), hint=hint,
                             tail="\n".join(tail))
        return code, "".join(chunks)

    def quiet(self, argv, cwd=None, env=None):
        """``(exit_code, stdout, stderr)`` of a small command, not shown in the log."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            res = subprocess.run(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            return 127, "", str(exc)
        return res.returncode, res.stdout.decode("utf-8", "replace"), res.stderr.decode("utf-8", "replace")


def control_dir(spec):
    return os.path.join(expand(spec["outputs_dir"]), "_control")


def _transition(spec, fields):
    fsm = spec.get("fsm") or {}
    request = {
        "outputs_dir": spec["outputs_dir"],
        "state_file": spec.get("state_file"),
        "to": fsm["to"],
        "trigger": fsm["trigger"],
        "expect": fsm.get("expect"),
        "enforce": fsm.get("enforce", True),
        "by": fsm.get("by"),
        "set": fields,
    }
    return state.transition(request)


def run_main(argv, kind, work):
    if len(argv) != 1:
        sys.stderr.write("usage: podagent %s SPEC.json\n" % KINDS[kind])
        return 2
    spec = read_json(argv[0], what="spec file")
    if spec is None:
        sys.stderr.write("%s: no spec file %s\n" % (KINDS[kind], argv[0]))
        return 2
    task_dir = os.environ.get("WF_TASK_DIR") or spec.get("task_dir")
    r = Runner(spec)
    t0 = time.monotonic()
    result = {"kind": kind, "task_id": spec.get("task_id"), "started_at": utcnow()}
    code = 1
    try:
        fields = work(r, result) or {}
        r.current = "state"
        doc = _transition(spec, fields)
        if doc.get("warning"):
            r.say("warning: " + doc["warning"])
            result["warning"] = doc["warning"]
        result.update(ok=True, state=doc["state"], fields=fields)
        r.milestone("%s: done, state %s" % (kind, doc["state"]))
        code = 0
    except StepFailed as exc:
        result.update(ok=False, step=r.current, message=exc.message, hint=exc.hint, tail=exc.tail)
        if exc.tail:
            r.say("--- last output of the failing command ---\n" + exc.tail)
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, exc.message))
        if exc.hint:
            r.say("hint: " + exc.hint)
    except AgentError as exc:
        result.update(ok=False, step=r.current, error_kind=exc.kind, message=exc.message, **exc.extra)
        if exc.kind == "refused":
            result["message"] = "the state changed while %s ran (%s); nothing was recorded" % (kind, exc.message)
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, result["message"]))
    except OSError as exc:  # the pod's file system said no: disk full, permissions, read-only
        where = ": %s" % exc.filename if exc.filename else ""
        result.update(ok=False, step=r.current, error_kind="os",
                      message="%s%s" % (exc.strerror or exc, where))
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, result["message"]))
    except Exception as exc:  # noqa: BLE001 - recorded, never lost
        result.update(ok=False, step=r.current, error_kind="internal",
                      message="%s: %s" % (type(exc).__name__, exc), tail=traceback.format_exc()[-3000:])
        r.say(traceback.format_exc())
        r.milestone("%s FAILED at %s: %s" % (kind, r.current, result["message"]))
    result.update(steps=r.steps, notes=r.notes, finished_at=utcnow(),
                  duration_secs=round(time.monotonic() - t0, 3))
    if task_dir:
        write_json_atomic(os.path.join(task_dir, RESULT_FILE), result)
    return code
