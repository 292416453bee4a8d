"""Progress of a tracked task, at one of three levels (SPEC §3, seed 000):

- ``realtime``: every line of the task's log as the pod writes it (git's output, apt's,
  a script's, the steps);
- ``milestones``: only the milestone lines — the ones the work on the pod prints with
  ``MILESTONE_PREFIX`` (a step starting, a step done or failed, the end);
- ``quiet``: nothing while it runs; the caller prints only the end.

Generic over tasks: anything that runs as a tracked task and marks its milestones with
the prefix can be followed (bootstrap, checkout, a sweep runner)::

    st = progress.follow(agent, task_id, progress.level(cfg.progress))
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from workflow import tracked
from workflow.errors import InputError

LEVELS = ("realtime", "milestones", "quiet")
#: A log line starting with this is a milestone (``workflow.agent.step_runner.MILESTONE``).
MILESTONE_PREFIX = "==> "
#: Lines of log already written that ``follow`` replays first (all of a fresh task's).
_REPLAY_LINES = 100_000

Sink = Callable[[str], Any]


def level(value: Optional[str], default: str = "milestones") -> str:
    """``value`` when it is a progress level (``None``: ``default``); InputError (exit 2) otherwise."""
    chosen = default if value in (None, "") else str(value).strip().lower()
    if chosen not in LEVELS:
        raise InputError(f"--progress must be one of {', '.join(LEVELS)}, not {value!r}")
    return chosen


def is_milestone(line: str) -> bool:
    return line.startswith(MILESTONE_PREFIX)


class LineFilter:
    """Feeds text arriving in arbitrary chunks; passes the whole lines ``keep`` accepts
    (called once per line, in order) to ``sink``."""

    def __init__(self, sink: Sink, keep: Callable[[str], bool]):
        self.sink, self.keep = sink, keep
        self.buf = ""

    def feed(self, text: str) -> None:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if self.keep(line):
                self.sink(line + "\n")

    def close(self) -> None:
        if self.buf and self.keep(self.buf):
            self.sink(self.buf + "\n")
        self.buf = ""


class MilestoneFilter(LineFilter):
    """Passes whole milestone lines to ``sink``."""

    def __init__(self, sink: Sink):
        super().__init__(sink, is_milestone)


def stdout_sink(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def follow(agent, task_id: str, how: str, *, sink: Optional[Sink] = None, tail: int = 30) -> tracked.TaskStatus:
    """Show task ``task_id``'s progress at level ``how`` until it ends; returns its final
    status (with ``tail`` log lines), whatever its state — the caller decides what a
    failure means."""
    out = sink or stdout_sink
    how = level(how)
    if how == "realtime":
        tracked.task_logs(agent, task_id, tail=_REPLAY_LINES, follow=True, sink=out)
    elif how == "milestones":
        filt = MilestoneFilter(out)
        try:
            tracked.task_logs(agent, task_id, tail=_REPLAY_LINES, follow=True, sink=filt.feed)
        finally:
            filt.close()
    return tracked.wait_task(agent, task_id, check=False, tail=tail)
