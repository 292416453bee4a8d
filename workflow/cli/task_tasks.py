"""tasks: tracked tasks on the pod — run, status, wait, list, logs, kill (SPEC §3)."""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from workflow import runtime
from workflow.cli.boundary import wf_task
from workflow.cli.pods import POD_HELP, on_pods, raise_returned
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
    "pod": POD_HELP,
})
def task_run(c, id, cmd, timeout_secs: Optional[float] = None, workdir=None, env=None, force=False, json=False,
             pod=None):
    """Start a tracked task on the pod in tmux and return once it runs; prints the id."""
    from workflow import tracked

    tracked.validate_id(id)
    secs, extra = _secs(timeout_secs, "--timeout-secs"), _parse_env(env)
    on_pods(pod, lambda: tracked.start_task(runtime.agent(), id, cmd, timeout_secs=secs, workdir=workdir,
                                            env=extra, force=force),
            render=lambda st: print(st.id), to_doc=lambda st: st.to_dict(), json=json)


@wf_task(help={"id": "task id", "tail": "how many log lines to show (20)", "json": "print one JSON document",
               "pod": POD_HELP})
def task_status(c, id, tail=20, json=False, pod=None):
    """Show a task's state, exit code, times and the last lines of its log."""
    from workflow import tracked

    tracked.validate_id(id)
    lines = _int(tail, "--tail")
    on_pods(pod, lambda: tracked.task_status(runtime.agent(), id, tail=lines), render=_print_status,
            to_doc=lambda st: st.to_dict(), json=json)


@wf_task(help={"id": "task id", "timeout_secs": "give up waiting after N seconds (exit 5; the task goes on)",
               "json": "print the final status as one JSON document", "pod": POD_HELP})
def task_wait(c, id, timeout_secs=None, json=False, pod=None):
    """Wait for a task to end: exit 0 success, 1 failed/timed_out/cancelled/lost, 5 wait timed out."""
    from workflow import tracked

    tracked.validate_id(id)
    secs = _secs(timeout_secs, "--timeout-secs")

    def work():
        try:
            return tracked.wait_task(runtime.agent(), id, timeout_secs=secs)
        except tracked.TaskFailed as exc:
            return exc  # its status is printed with --json, then it is raised

    def render(st):
        if not isinstance(st, tracked.TaskFailed):
            print(f"task {st.id}: {st.state} (exit {st.exit_code}, {st.duration_secs or 0:.1f}s)")

    results = on_pods(pod, work, render=render, json=json,
                      to_doc=lambda st: (st.status if isinstance(st, tracked.TaskFailed) else st).to_dict())
    raise_returned(results, tracked.TaskFailed)


@wf_task(help={"json": "print {\"tasks\": [...]} as one JSON document", "pod": POD_HELP})
def task_list(c, json=False, pod=None):
    """List the tracked tasks on the pod: id, state, exit code, started, duration."""
    from workflow import tracked

    on_pods(pod, lambda: tracked.list_tasks(runtime.agent()), render=_print_tasks,
            to_doc=lambda rows: {"tasks": [r.to_dict() for r in rows]}, json=json)


def _print_tasks(rows) -> None:
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
               "json": "print {\"id\", \"text\", \"status\"} as one JSON document (not with --follow)",
               "pod": POD_HELP})
def task_logs(c, id, tail: Optional[int] = None, follow=False, json=False, pod=None):
    """Print a task's stdout.log (stdout and stderr); --follow streams it until the task ends."""
    from workflow import tracked

    if json and follow:
        raise InputError("--json prints the log once; it cannot be combined with --follow")
    tracked.validate_id(id)
    lines = _int(tail, "--tail")

    def work():
        chunks: list = []
        st = tracked.task_logs(runtime.agent(), id, tail=lines, follow=follow, sink=chunks.append if json else None)
        return st, "".join(chunks)

    on_pods(pod, work, to_doc=lambda got: {"id": got[0].id, "text": got[1], "status": got[0].to_dict()}, json=json)


@wf_task(help={"id": "task id", "json": "print the final status as one JSON document", "pod": POD_HELP})
def task_kill(c, id, json=False, pod=None):
    """Stop a task: TERM its whole process group (grandchildren too), then KILL; state cancelled."""
    from workflow import tracked

    tracked.validate_id(id)
    on_pods(pod, lambda: tracked.kill_task(runtime.agent(), id), render=_print_killed,
            to_doc=lambda killed: killed[0].to_dict(), json=json)


def _print_killed(killed) -> None:
    st, was_active = killed
    if was_active:
        print(f"task {st.id}: {st.state} (exit {st.exit_code})")
    else:
        print(f"task {st.id} had already ended: {st.state} (exit {st.exit_code})")
