"""Tracked tasks on the pod: ``<outputs_dir>/_tasks/<id>/`` driven by ``procs``.

Ops (one exec each, JSON in/out): ``task.run``, ``task.status``, ``task.list``,
``task.wait``, ``task.logs`` (``follow`` streams the log on stdout *before* the answer's
markers), ``task.kill``. Every reader runs the repair pass (``procs.refresh_status``),
so a task whose wrapper died is reported — and recorded — ``lost``.

The long-running entry point is ``task-wrap DIR NONCE`` (``procs.wrap_main``), started
by ``task.run`` in a window of the tmux session ``session`` on a private socket named
after the outputs dir (or detached when the pod has no tmux).
"""

import os
import select
import shutil
import sys

from . import node_word, procs, serve
from .fsutil import expand, makedirs, utcnow
from .protocol import AgentError

#: The longest any op blocks (wait, follow); the engine loops for longer waits and
#: keeps its transport timeout above this.
MAX_BLOCK_SECS = 300.0
DEFAULT_TAIL = 20


def _abandoned_check():
    """True once nobody reads the answer: this op's parent (the SSH session) is gone, or
    its stdout's reader is (a session that died before this process started leaves it
    with a parent that never changes, but with a pipe whose other end is closed), or
    (``podagent serve``) its caller closed the channel."""
    parent = os.getppid()

    def gone():
        if os.getppid() != parent or serve.caller_gone():
            return True
        try:
            poller = select.poll()
            poller.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP are always reported
            return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
        except (OSError, ValueError):  # served: stdout is the op's capture, with no fd
            return False

    return gone


def tasks_root(request):
    return os.path.join(expand(request["outputs_dir"]), "_tasks")


def task_dir(request, must_exist=True):
    task_id = procs.validate_id(request.get("id"))
    d = os.path.join(tasks_root(request), task_id)
    if must_exist and not os.path.isfile(os.path.join(d, procs.STATUS_FILE)):
        raise AgentError("input", "no task '%s' on the pod" % task_id, missing=True)
    return d


def _public(doc, d, tail_lines=None):
    out = dict(doc)
    out["dir"] = d
    out["duration_secs"] = procs.duration_secs(doc)
    if tail_lines:
        out["log_tail"] = procs.tail(d, tail_lines)
    return out


def _backup(root, task_id, d):
    backups = os.path.join(root, ".backup")
    makedirs(backups)
    stamp = utcnow().replace(":", "").replace("-", "")
    dest = os.path.join(backups, "%s.%s.%d" % (task_id, stamp, os.getpid()))
    try:
        os.rename(d, dest)
    except FileNotFoundError:
        return None  # someone else moved it first; our mkdir will race fairly
    return dest


def run(request):
    """``{id, command, timeout_secs, workdir, env, force, session, ...}`` -> status (running)."""
    task_id = procs.validate_id(request.get("id"))
    command = request.get("command")
    if not isinstance(command, str) or not command.strip():
        raise AgentError("input", "task '%s': the command is empty" % task_id)
    env = request.get("env") or {}
    if not isinstance(env, dict):
        raise AgentError("input", "env must be a mapping")
    workdir = request.get("workdir")
    if workdir:
        workdir = expand(workdir)
        if not os.path.isdir(workdir):
            raise AgentError("input", "task '%s': workdir %s does not exist on the pod" % (task_id, workdir))
    root = tasks_root(request)
    makedirs(root)
    d = os.path.join(root, task_id)
    attempt, backup = 1, None
    if os.path.lexists(d) and request.get("force"):
        old = None
        try:
            old = procs.refresh_status(d)
        except AgentError:
            old = None  # corrupt: back it up as it is
        if old and old.get("state") in procs.ACTIVE:
            raise AgentError("input", "task '%s' is still %s; task-kill it first" % (task_id, old["state"]))
        attempt = int((old or {}).get("attempt") or 0) + 1
        backup = _backup(root, task_id, d)
    try:
        os.mkdir(d, 0o755)
    except FileExistsError:
        state = "?"
        try:
            state = (procs.refresh_status(d) or {}).get("state", "?")
        except AgentError:
            pass
        raise AgentError("input", "task '%s' already exists (state %s); use --force to run it again "
                                  "(the old directory is kept as a backup)" % (task_id, state), exists=True)
    extra = {"backup_of_previous": backup} if backup else {}
    try:
        procs.prepare(d, task_id, command, timeout_secs=request.get("timeout_secs"), workdir=workdir,
                      attempt=attempt, extra=extra)
    except OSError:
        # e.g. the disk is full: leave no half-made task behind (it would block the id
        # forever) and put the previous run back where it was.
        shutil.rmtree(d, ignore_errors=True)
        if backup:
            os.rename(backup, d)
        raise
    session = request.get("session") or "podflow-tasks"
    tmux = None if request.get("no_tmux") else {
        "socket": request.get("socket") or procs.tmux_socket_name(expand(request["outputs_dir"])),
        "session": session}
    kwargs = {}
    for key in ("start_timeout", "heartbeat_secs", "grace_secs"):
        if request.get(key) is not None:
            kwargs[key] = float(request[key])
    doc = procs.launch(d, env=procs.job_env(env), tmux=tmux, window_name=task_id, **kwargs)
    return _public(doc, d)


def status(request):
    d = task_dir(request)
    tail_lines = request.get("tail", DEFAULT_TAIL)
    return _public(procs.refresh_status(d), d, tail_lines)


def list_tasks(request):
    """Every task with id, state, exit code, times, duration (one pass, repaired)."""
    root = tasks_root(request)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        names = []
    rows = []
    for name in names:
        if not procs.ID_RE.match(name):
            continue
        d = os.path.join(root, name)
        try:
            doc = procs.refresh_status(d)
        except AgentError as exc:
            rows.append({"id": name, "state": "unknown", "error": exc.message})
            continue
        if doc is None:
            continue
        rows.append({
            "id": doc.get("id", name),
            "state": doc.get("state"),
            "exit_code": doc.get("exit_code"),
            "created_at": doc.get("created_at"),
            "started_at": doc.get("started_at"),
            "finished_at": doc.get("finished_at"),
            "duration_secs": procs.duration_secs(doc),
            "attempt": doc.get("attempt"),
            "timeout_secs": doc.get("timeout_secs"),
        })
    rows.sort(key=lambda r: (r.get("created_at") or "", r["id"]))
    return {"tasks": rows}


def wait(request):
    """Block until the task ends or ``wait_secs`` (<= MAX_BLOCK_SECS) pass."""
    d = task_dir(request)
    secs = request.get("wait_secs")
    secs = MAX_BLOCK_SECS if secs is None else min(float(secs), MAX_BLOCK_SECS)
    doc, done = procs.wait(d, secs, abandoned=_abandoned_check())
    out = _public(doc, d, request.get("tail", DEFAULT_TAIL))
    out["finished"] = done
    return out


def logs(request):
    """Log tail; with ``follow`` the log is streamed on stdout until the task ends."""
    d = task_dir(request)
    tail_lines = request.get("tail")
    if not request.get("follow"):
        doc = procs.refresh_status(d)
        return {"status": _public(doc, d), "text": procs.tail(d, tail_lines), "finished": True}
    secs = request.get("max_secs")
    secs = 3600.0 if secs is None else float(secs)
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    doc, offset, done = procs.follow(d, out, offset=request.get("offset"),
                                     lines=DEFAULT_TAIL if tail_lines is None else tail_lines, secs=secs,
                                     abandoned=_abandoned_check())
    return {"status": _public(doc, d), "offset": offset, "finished": done}


def kill(request):
    d = task_dir(request)
    doc, was_active = procs.terminate(d, grace_secs=request.get("grace_secs"))
    out = _public(doc, d, request.get("tail", DEFAULT_TAIL))
    out["was_active"] = was_active
    return out


OPS = {
    "task.run": run,
    "task.status": status,
    "task.list": list_tasks,
    "task.wait": wait,
    "task.logs": logs,
    "task.kill": kill,
}

COMMANDS = {procs.WRAP_COMMAND: procs.wrap_main, node_word.WORD_COMMAND: node_word.word_main}

