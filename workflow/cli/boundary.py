"""The one error boundary: typed errors -> message on stderr + SPEC §3 exit code.

Every task is declared with ``@wf_task`` instead of ``invoke.task``; library code raises
``PodflowError`` subclasses and never prints tracebacks for user errors.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

from invoke import Exit, task

from workflow.errors import ExitCode, PodflowError


def wf_task(*args: Any, **kwargs: Any) -> Callable:
    """``invoke.task`` plus the error boundary. The docstring's first line is the
    one-line help in ``--list``; the rest is ``--help``."""

    def decorate(fn: Callable) -> Any:
        @functools.wraps(fn)
        def guarded(c, *a, **kw):
            _json_printed.clear()
            try:
                return fn(c, *a, **kw)
            except PodflowError as exc:
                if kw.get("json") and not _json_printed:  # one document even on failure
                    print_json({"error": {"type": type(exc).__name__, "message": exc.message,
                                          "hint": exc.hint}, "exit_code": int(exc.exit_code)})
                raise Exit(f"error: {exc}", code=int(exc.exit_code)) from None
            except KeyboardInterrupt:
                raise Exit("interrupted", code=int(ExitCode.INTERRUPTED)) from None

        return task(*args, **kwargs)(guarded)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        fn, args = args[0], ()
        return decorate(fn)
    return decorate


#: Non-empty once the running task printed its JSON document (a failing task that already
#: reported, e.g. ``task-wait --json`` of a failed task, gets no second document).
_json_printed: list = []


def print_json(doc: Any) -> None:
    """The one JSON document a ``--json`` read command prints on stdout."""
    _json_printed.append(True)
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
