"""Tracked tasks, the engine's side (SPEC §3 tasks group, §5 ``_tasks/<id>/``).

Long work on the pod runs as a tracked task: ``command.sh`` + ``status.json`` +
``stdout.log`` under ``<outputs_dir>/_tasks/<id>/``, started in a tmux window by the
podagent (``workflow/agent/tasks.py``, ``procs.py``), so nothing blocks the caller and
nothing is lost when the connection drops. Every function here costs one podagent call
(one remote exec) whatever the number of tasks; waits longer than the agent's bound
(``MAX_BLOCK_SECS``) cost one exec per bound.

Library API (bootstrap, checkout and the CLI are built on it)::

    st = start_task(agent, "bootstrap", "bash setup.sh", timeout_secs=600)
    st = wait_task(agent, "bootstrap")          # TaskFailed (exit 1) unless success
    rows = list_tasks(agent)
    task_logs(agent, "bootstrap", follow=True, sink=sys.stdout.write)
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from workflow.agent import protocol
from workflow.errors import CorruptRemoteFile, InputError, RemoteCommandFailed, WaitTimeout

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TERMINAL = ("success", "failed", "timed_out", "cancelled", "lost")
STATES = ("pending", "running") + TERMINAL
#: Must match ``workflow.agent.tasks.MAX_BLOCK_SECS``: the longest one agent call blocks.
MAX_BLOCK_SECS = 300.0
#: Head-room between the agent's own bound and the transport's timeout (exit 124).
_SLACK_SECS = 60.0
DEFAULT_TAIL = 20


class TaskFailed(RemoteCommandFailed):
    """A task ended failed, timed_out, cancelled or lost (exit 1); carries its status
    and the tail of its log."""

    def __init__(self, status: "TaskStatus"):
        self.status = status
        what = status.state if status.exit_code is None else f"{status.state}, exit {status.exit_code}"
        detail = f": {status.error}" if status.error and status.state != "failed" else ""
        super().__init__(f"task '{status.id}' ({what}{detail})",
                         status.exit_code if status.exit_code is not None else 1, status.log_tail or "",
                         hint=f"wf task-logs --id {status.id}  shows the whole log")


def validate_id(task_id: Any) -> str:
    """``task_id`` when it is a valid task id; InputError (exit 2) otherwise."""
    if not isinstance(task_id, str) or not ID_RE.match(task_id):
        raise InputError(f"invalid task id {task_id!r}: it must match {ID_RE.pattern} "
                         "(letters, digits, '.', '_', '-'; first a letter or digit; at most 128)")
    return task_id


@dataclass(frozen=True)
class TaskStatus:
    """One task as the pod knows it (after the repair pass)."""

    id: str
    """The task id (the directory name under ``_tasks/``)."""
    state: str
    """``pending``, ``running``, ``success``, ``failed``, ``timed_out``, ``cancelled`` or ``lost``."""
    exit_code: Optional[int] = None
    """The command's exit code (128+N when killed by signal N); None while running or when lost."""
    command: Optional[str] = None
    """The exact text of ``command.sh``."""
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    """UTC ISO-8601 times."""
    timeout_secs: Optional[float] = None
    pid: Optional[int] = None
    """The command's pid (also its process group id)."""
    heartbeat_at: Optional[str] = None
    """Refreshed every few seconds by the wrapper while the task runs."""
    attempt: Optional[int] = None
    """1, then +1 for each ``--force`` rerun of the same id."""
    duration_secs: Optional[float] = None
    error: Optional[str] = None
    """Why it ended the way it did (timeout, cancel, lost), when not a plain exit."""
    log_tail: Optional[str] = None
    """The last lines of ``stdout.log`` (only where the call asked for them)."""
    dir: Optional[str] = None
    """The task directory on the pod."""
    workdir: Optional[str] = None
    tmux_session: Optional[str] = None
    tmux_socket: Optional[str] = None
    tmux_window: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Other fields of ``status.json`` (pgid, wrapper_pid, boot_id, ...)."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def ok(self) -> bool:
        return self.state == "success"

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "TaskStatus":
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        known = {k: doc.get(k) for k in names if k in doc}
        if not isinstance(known.get("id"), str) or known.get("state") not in STATES:
            where = f"{doc['dir']}/status.json" if isinstance(doc.get("dir"), str) else "a status.json"
            raise CorruptRemoteFile(
                f"{where} is not a task status (id {known.get('id')!r}, state {known.get('state')!r}); "
                "it was left as it is",
                hint="fix or remove the file by hand; podflow never overwrites it")
        extra = {k: v for k, v in doc.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra") or {})
        return out


@dataclass(frozen=True)
class TaskRow:
    """One line of ``task-list``."""

    id: str
    state: str
    exit_code: Optional[int] = None
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    duration_secs: Optional[float] = None
    attempt: Optional[int] = None
    timeout_secs: Optional[float] = None
    error: Optional[str] = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "TaskRow":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in names})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskSettings:
    """Config-derived defaults for starting tasks."""

    session: str = "podflow-tasks"
    """tmux session of tracked tasks (``tasks.tmux_session``, default ``<project>-tasks``)."""
    timeout_secs: Optional[float] = None
    """``tasks.timeout_secs``: default timeout of a task (None = none)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """``remote.env``: extra environment of every remote command."""

    @classmethod
    def from_config(cls, cfg) -> "TaskSettings":
        session = cfg.get("tasks.tmux_session", None) or f"{cfg.get('project', 'podflow')}-tasks"
        env = {str(k): "" if v is None else str(v) for k, v in dict(cfg.get("remote.env", None) or {}).items()}
        return cls(session=session, timeout_secs=cfg.get("tasks.timeout_secs", None), env=env)


def _settings() -> TaskSettings:
    from workflow import runtime

    try:
        return TaskSettings.from_config(runtime.config())
    except Exception:  # noqa: BLE001 - no usable config: plain defaults
        return TaskSettings()


def start_task(agent, task_id: str, cmd: str, timeout_secs: Optional[float] = None,
               workdir: Optional[str] = None, env: Optional[Mapping[str, str]] = None, force: bool = False,
               *, settings: Optional[TaskSettings] = None, grace_secs: Optional[float] = None) -> TaskStatus:
    """Start ``cmd`` (shell text, run by bash exactly as written) as task ``task_id`` and
    return once it runs. ``env`` is added to ``remote.env``; an existing id is refused
    (InputError) unless ``force``, which keeps the old directory as a backup."""
    validate_id(task_id)
    if not isinstance(cmd, str) or not cmd.strip():
        raise InputError("the task command is empty")
    if timeout_secs is not None and timeout_secs <= 0:
        raise InputError(f"timeout must be > 0 seconds, not {timeout_secs}")
    s = settings or _settings()
    full_env = dict(s.env)
    full_env.update(env or {})
    request: Dict[str, Any] = {
        "id": task_id,
        "command": cmd,
        "timeout_secs": timeout_secs if timeout_secs is not None else s.timeout_secs,
        "workdir": workdir,
        "env": full_env,
        "force": bool(force),
        "session": s.session,
    }
    if grace_secs is not None:
        request["grace_secs"] = grace_secs
    return TaskStatus.from_doc(agent.call("task.run", timeout=90, **request))


def task_status(agent, task_id: str, tail: int = DEFAULT_TAIL) -> TaskStatus:
    """The task's status (repaired: a dead wrapper reads ``lost``) and its log tail."""
    return TaskStatus.from_doc(agent.call("task.status", timeout=60, id=validate_id(task_id), tail=tail))


def list_tasks(agent) -> List[TaskRow]:
    """Every task on the pod, oldest first, in one call."""
    doc = agent.call("task.list", timeout=120)
    return [TaskRow.from_doc(r) for r in doc.get("tasks", [])]


def wait_task(agent, task_id: str, timeout_secs: Optional[float] = None, *, check: bool = True,
              tail: int = DEFAULT_TAIL) -> TaskStatus:
    """Block until the task ends; returns as soon as it does (the agent watches the
    status file finely). ``timeout_secs``: WaitTimeout (exit 5), the task goes on.
    ``check``: TaskFailed (exit 1, with the log tail) unless it ended ``success``."""
    validate_id(task_id)
    deadline = None if timeout_secs is None else time.monotonic() + max(0.0, float(timeout_secs))
    while True:
        left = MAX_BLOCK_SECS if deadline is None else max(0.0, min(MAX_BLOCK_SECS, deadline - time.monotonic()))
        doc = agent.call("task.wait", timeout=left + _SLACK_SECS, id=task_id, wait_secs=left, tail=tail)
        status = TaskStatus.from_doc(doc)
        if doc.get("finished"):
            if check and not status.ok:
                raise TaskFailed(status)
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"task '{task_id}' is still {status.state} after {timeout_secs}s; it goes on",
                              hint=f"wf task-wait --id {task_id}  waits again; wf task-kill --id {task_id} stops it")


def kill_task(agent, task_id: str, grace_secs: Optional[float] = None) -> Tuple[TaskStatus, bool]:
    """Cancel the task: TERM to its whole process group (grandchildren included), KILL
    after ``grace_secs``. Returns (status, whether it was still active)."""
    request: Dict[str, Any] = {"id": validate_id(task_id)}
    if grace_secs is not None:
        request["grace_secs"] = grace_secs
    doc = agent.call("task.kill", timeout=(grace_secs or 10.0) + _SLACK_SECS, **request)
    return TaskStatus.from_doc(doc), bool(doc.get("was_active"))


class _StreamFilter:
    """Passes a streaming op's output to ``sink`` as it arrives, minus the answer's
    marker block at the end (the last ``BEGIN`` is the answer; text before it is log)."""

    SENTINEL = "\n" + protocol.BEGIN

    def __init__(self, sink: Callable[[str], Any]):
        self.sink = sink
        self.buf = ""

    def feed(self, text: str) -> None:
        self.buf += text
        s = self.SENTINEL
        i = self.buf.find(s)
        if i == 0:
            j = self.buf.find(s, 1)  # a marker inside the log itself: a later one is the answer
            if j < 0:
                return
            i = j
        if i > 0:
            self._emit(self.buf[:i])
            self.buf = self.buf[i:]
            return
        keep = 0
        for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
            if s.startswith(self.buf[-k:]):
                keep = k
                break
        self._emit(self.buf[: len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]

    def close(self) -> None:
        j = self.buf.rfind(self.SENTINEL)
        self._emit(self.buf if j < 0 else self.buf[:j])
        self.buf = ""

    def _emit(self, text: str) -> None:
        if text:
            self.sink(text)


def task_logs(agent, task_id: str, tail: Optional[int] = None, follow: bool = False,
              sink: Optional[Callable[[str], Any]] = None) -> TaskStatus:
    """Write the task's log (all of it, or the last ``tail`` lines) to ``sink``
    (default: stdout). ``follow``: keep streaming new lines as they are written until
    the task ends — one exec, the lines arriving as the pod writes them."""
    validate_id(task_id)
    out = sink or _stdout_sink
    if not follow:
        doc = agent.call("task.logs", timeout=120, id=task_id, tail=tail)
        if doc.get("text"):
            out(doc["text"])
        return TaskStatus.from_doc(doc["status"])
    offset = None
    while True:
        filt = _StreamFilter(out)
        request: Dict[str, Any] = {"id": task_id, "follow": True, "tail": DEFAULT_TAIL if tail is None else tail,
                                   "max_secs": MAX_BLOCK_SECS * 12}
        if offset is not None:
            request["offset"] = offset
        try:
            doc = agent.call("task.logs", timeout=None, on_stdout=filt.feed, **request)
        finally:
            filt.close()
        offset = doc.get("offset")
        if doc.get("finished"):
            return TaskStatus.from_doc(doc["status"])


def _stdout_sink(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
