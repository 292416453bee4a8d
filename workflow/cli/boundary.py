"""The one error boundary: typed errors -> message on stderr + SPEC §3 exit code.

Every task is declared with ``@wf_task`` instead of ``invoke.task``; library code raises
``PodflowError`` subclasses and never prints tracebacks for user errors.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import sys
from typing import Any, Callable, Iterator, List

from invoke import Exit, task

from workflow.errors import ExitCode, PodflowError


def wf_task(*args: Any, **kwargs: Any) -> Callable:
    """``invoke.task`` plus the error boundary. The docstring's first line is the
    one-line help in ``--list``; the rest is ``--help``."""

    def decorate(fn: Callable) -> Any:
        @functools.wraps(fn)
        def guarded(c, *a, **kw):
            from workflow import runtime

            _json_printed.clear()
            runtime.keep_connections()
            try:
                return fn(c, *a, **kw)
            except PodflowError as exc:
                if kw.get("json") and not _json_printed:  # one document even on failure
                    print_json({"error": {"type": type(exc).__name__, "message": exc.message,
                                          "hint": exc.hint}, "exit_code": int(exc.exit_code)})
                raise Exit(f"error: {exc}", code=int(exc.exit_code)) from None
            except KeyboardInterrupt:
                raise Exit("interrupted", code=int(ExitCode.INTERRUPTED)) from None

        made = task(*args, **kwargs)(guarded)
        made.flag_help = dict(made.help)  # Invoke's parser consumes .help; `wf mcp` needs it too
        return made

    if len(args) == 1 and callable(args[0]) and not kwargs:
        fn, args = args[0], ()
        return decorate(fn)
    return decorate


#: Non-empty once the running task printed its JSON document (a failing task that already
#: reported, e.g. ``task-wait --json`` of a failed task, gets no second document).
_json_printed: list = []


#: Where ``print_json`` sends documents instead of stdout while ``capture_json`` is active
#: (the MCP server calls a task in-process and takes its document as an object).
_json_sink: list = []


def print_json(doc: Any) -> None:
    """The one JSON document a ``--json`` read command prints on stdout: indented for a
    person at a terminal, on one line for a program reading a pipe (Python's C encoder
    does not indent; indenting takes it ~8x longer, e.g. 40 ms for 1000 runs)."""
    _json_printed.append(True)
    if _json_sink:  # the very document stdout would get
        _json_sink[-1].append(json.loads(json.dumps(doc, sort_keys=True, default=str)))
        return
    text = json.dumps(doc, indent=2 if sys.stdout.isatty() else None, sort_keys=True, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def capture_json() -> Iterator[List[Any]]:
    """Collect the documents ``print_json`` emits (as parsed JSON) instead of printing
    them: how ``wf mcp`` runs a task's ``--json`` path in-process. Not re-entrant across
    threads; the caller runs one task at a time."""
    docs: List[Any] = []
    _json_sink.append(docs)
    try:
        yield docs
    finally:
        _json_sink.pop()


def strict_parsing(program: Any) -> Any:
    """Make ``program`` (an ``invoke.Program``) treat every command-line parse error as
    bad input (SPEC §3: exit 2) with a "did you mean" for a misspelt task or flag.

    Invoke prints its ParseError and exits 1; here the parse steps turn it into
    ``Exit(text, 2)``, which Invoke prints and exits with. Applied to the ``wf`` program
    and, from ``tasks.py``, to the running ``invoke`` program (whose core flags are
    parsed before ``tasks.py`` is loaded, so only those keep Invoke's exit 1)."""
    from invoke.exceptions import ParseError

    def guard(step: Callable) -> Callable:
        @functools.wraps(step)
        def guarded(*a: Any, **kw: Any) -> Any:
            try:
                return step(*a, **kw)
            except ParseError as exc:
                raise Exit(parse_error_text(exc, program), code=int(ExitCode.BAD_INPUT)) from None
        return guarded

    for name in ("parse_core", "parse_tasks", "parse_cleanup"):
        setattr(program, name, guard(getattr(program, name)))
    return program


def parse_error_text(exc: Any, program: Any) -> str:
    """``error: ...`` plus a hint naming the closest task or flag (and where to look)."""
    import difflib
    import re

    binary = program.called_as or "wf"
    # Invoke names a flag by its repr ("<Argument: run_id (r) *>"); say "--run-id".
    message = re.sub(r"<Argument: (\w+)[^>]*>", lambda m: "'--" + m.group(1).replace("_", "-") + "'", str(exc))
    unknown = re.fullmatch(r"No idea what '(.*)' is!", message)
    context = getattr(exc, "context", None)
    task = getattr(context, "name", None)
    if not unknown:
        look = f"'{binary} --help {task}' shows its flags" if task else f"'{binary} --help' shows the usage"
        return f"error: {message}\n  hint: {look}"
    token = unknown.group(1)
    if token.startswith("-"):
        flags = list(getattr(context, "flags", {})) + list(getattr(context, "inverse_flags", {}))
        close = difflib.get_close_matches(token, [f for f in flags if f.startswith("--")] or flags, n=1)
        where = f" for {task}" if task else ""
        look = f"'{binary} --help {task}' lists its flags" if task else f"'{binary} --help' lists the flags"
        what = f"unknown flag '{token}'{where}"
    else:
        names = []
        collection = getattr(program, "collection", None)
        for name, aliases in (collection.task_names.items() if collection else ()):
            names += [name, *aliases]
        close = difflib.get_close_matches(token, names, n=1)
        look = f"'{binary} --list' shows every task"
        what = f"'{token}' is not a task" + (f" (nor an argument {task} takes)" if task else "")
    guess = f"did you mean '{close[0]}'? " if close else ""
    return f"error: {what}\n  hint: {guess}{'(' + look + ')' if guess else look}"


def task_arguments(made) -> list:
    """Invoke's ``Argument`` list for a task, each with its help, exactly as the CLI parser
    gets it. Invoke consumes ``task.help`` while building it (and ``wf`` builds its parser
    before a task runs), so this works on a copy with the help that ``wf_task`` kept."""
    twin = copy.copy(made)
    twin.help = dict(getattr(made, "flag_help", made.help))
    return twin.get_arguments()
