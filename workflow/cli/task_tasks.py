"""tasks: tracked tasks on the pod — run, status, wait, list, logs, kill (SPEC §3)."""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from workflow import runtime
from workflow.cli.boundary import print_json, wf_task
from workflow.errors import InputError


def _parse_env(pairs: Iterable[str]) -> Dict[str, str]:
    env: Dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--env wants KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def _secs(value: Optional[str], flag: str) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        secs = float(value)
    except ValueError:
        raise InputError(f"{flag} wants a number of seconds, not {value!r}") from None
    if secs <= 0:
        raise InputError(f"{flag} must be > 0")
    return secs


def _int(value, flag: str) -> Optional[int]:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{flag} wants a whole number, not {value!r}") from None


def _print_status(st, tail: bool = True) -> None:
    code = "-" if st.exit_code is None else st.exit_code
    print(f"task {st.id}: {st.state} (exit {code})")
    for label, value in (("command", st.command), ("created", st.created_at), ("started", st.started_at),
                         ("finished", st.finished_at), ("heartbeat", st.heartbeat_at),
                         ("duration", None if st.duration_secs is None else f"{st.duration_secs:.1f}s"),
                         ("timeout", None if st.timeout_secs is None else f"{st.timeout_secs}s"),
                         ("attempt", st.attempt), ("error", st.error), ("dir", st.dir)):
        if value is not None:
            text = str(value)
            if "\n" in text:
                text = text.replace("\n", "\n    ")
            print(f"  {label}: {text}")
    if tail and st.log_tail:
        print("--- last lines of stdout.log ---")
        print(st.log_tail.rstrip("\n"))


@wf_task(iterable=["env"], help={
    "id": "task id: letters, digits, '.', '_', '-' (first a letter or digit)",
    "cmd": "shell text run by bash on the pod, exactly as written (it becomes command.sh)",
    "timeout_secs": "TERM the task's whole process group after N seconds (KILL after a grace period)",
    "workdir": "directory on the pod to run in (default: the pod user's home)",
    "env": "KEY=VALUE added to the task's environment (repeatable; on top of remote.env)",
    "force": "run again under an id that exists; the old directory is kept as a backup",
    "json": "print the status as one JSON document",
})
def task_run(c, id, cmd, timeout_secs: Optional[float] = None, workdir=None, env=None, force=False, json=False):
    """Start a tracked task on the pod in tmux and return once it runs; prints the id."""
    from workflow import tracked

    tracked.validate_id(id)
    st = tracked.start_task(runtime.agent(), id, cmd, timeout_secs=_secs(timeout_secs, "--timeout-secs"),
                            workdir=workdir, env=_parse_env(env), force=force)
    if json:
        print_json(st.to_dict())
    else:
        print(st.id)


@wf_task(help={"id": "task id", "tail": "how many log lines to show (20)", "json": "print one JSON document"})
def task_status(c, id, tail=20, json=False):
    """Show a task's state, exit code, times and the last lines of its log."""
    from workflow import tracked

    st = tracked.task_status(runtime.agent(), tracked.validate_id(id), tail=_int(tail, "--tail"))
    if json:
        print_json(st.to_dict())
    else:
        _print_status(st)


@wf_task(help={"id": "task id", "timeout_secs": "give up waiting after N seconds (exit 5; the task goes on)",
               "json": "print the final status as one JSON document"})
def task_wait(c, id, timeout_secs=None, json=False):
    """Wait for a task to end: exit 0 success, 1 failed/timed_out/cancelled/lost, 5 wait timed out."""
    from workflow import tracked

    tracked.validate_id(id)
    try:
        st = tracked.wait_task(runtime.agent(), id, timeout_secs=_secs(timeout_secs, "--timeout-secs"))
    except tracked.TaskFailed as exc:
        if json:
            print_json(exc.status.to_dict())
        raise
    if json:
        print_json(st.to_dict())
    else:
        print(f"task {st.id}: {st.state} (exit {st.exit_code}, {st.duration_secs or 0:.1f}s)")


@wf_task(help={"json": "print {\"tasks\": [...]} as one JSON document"})
def task_list(c, json=False):
    """List the tracked tasks on the pod: id, state, exit code, started, duration."""
    from workflow import tracked

    rows = tracked.list_tasks(runtime.agent())
    if json:
        print_json({"tasks": [r.to_dict() for r in rows]})
        return
    if not rows:
        print("no tasks")
        return
    width = max(4, max(len(r.id) for r in rows))
    print(f"{'ID':<{width}}  {'STATE':<9}  {'EXIT':>4}  {'STARTED':<20}  DURATION")
    for r in rows:
        code = "-" if r.exit_code is None else str(r.exit_code)
        started = (r.started_at or "-")[:19].replace("T", " ")
        dur = "-" if r.duration_secs is None else f"{r.duration_secs:.1f}s"
        print(f"{r.id:<{width}}  {r.state:<9}  {code:>4}  {started:<20}  {dur}")


@wf_task(help={"id": "task id", "tail": "only the last N lines", "follow": "keep printing new lines until the task ends",
               "json": "print {\"id\", \"text\", \"status\"} as one JSON document (not with --follow)"})
def task_logs(c, id, tail: Optional[int] = None, follow=False, json=False):
    """Print a task's stdout.log (stdout and stderr); --follow streams it until the task ends."""
    from workflow import tracked

    if json and follow:
        raise InputError("--json prints the log once; it cannot be combined with --follow")
    chunks = []
    st = tracked.task_logs(runtime.agent(), tracked.validate_id(id), tail=_int(tail, "--tail"), follow=follow,
                           sink=chunks.append if json else None)
    if json:
        print_json({"id": st.id, "text": "".join(chunks), "status": st.to_dict()})


@wf_task(help={"id": "task id", "json": "print the final status as one JSON document"})
def task_kill(c, id, json=False):
    """Stop a task: TERM its whole process group (grandchildren too), then KILL; state cancelled."""
    from workflow import tracked

    st, was_active = tracked.kill_task(runtime.agent(), tracked.validate_id(id))
    if json:
        print_json(st.to_dict())
    elif was_active:
        print(f"task {st.id}: {st.state} (exit {st.exit_code})")
    else:
        print(f"task {st.id} had already ended: {st.state} (exit {st.exit_code})")
