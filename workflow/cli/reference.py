"""The generated parts of ``docs/reference.md``: every command with its flags (from the
task collection) and every config key with its type, default, env alias and meaning
(from ``workflow/config/schema.json``, ``defaults.py`` and the alias table).

The rest of that file (exit codes, files on the pod, ``--json`` shapes) is written by
hand around these regions; ``tests/test_reference.py`` fails when a region differs from
what this module generates. After adding or changing a task, flag or config key::

    python -m workflow.cli.reference --write docs/reference.md

Not imported by ``wf`` itself (it would slow ``wf --help`` down for nothing).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List

from workflow.cli.boundary import task_arguments

REGENERATE = "python -m workflow.cli.reference --write docs/reference.md"


def _marker(name: str, end: str) -> str:
    return f"<!-- generated:{name}:{end} (edit the code, then: {REGENERATE}) -->"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _dashed(arg) -> str:
    return arg.name.replace("_", "-")


def _metavar(arg) -> str:
    return arg.name.upper().replace("-", "_")


def _flag(arg) -> str:
    return f"--{_dashed(arg)}" if arg.kind is bool else f"--{_dashed(arg)} {_metavar(arg)}"


def _usage(name: str, args) -> str:
    positional = [_metavar(a) for a in args if a.positional]
    optional = [f"[{_flag(a)}]" for a in args if not a.positional]
    return " ".join(["wf", name, *positional, *optional])


def command_markdown(name: str, task) -> str:
    """One task: summary, usage, flags table, the rest of its docstring."""
    doc = inspect.cleandoc(task.__doc__ or "")
    summary, _, body = doc.partition("\n")
    args = task_arguments(task)
    lines = [f"#### `wf {name}`", "", summary.strip(), "", f"    {_usage(name, args)}", ""]
    if args:
        lines += ["| flag | short | value | meaning |", "|---|---|---|---|"]
        for a in args:
            short = next((f"`-{n}`" for n in a.names if len(n) == 1), "")
            if a.positional:
                value = f"value, required; or as the argument `{_metavar(a)}`"
            elif a.kind is bool:
                value = "switch"
            elif a.kind is list:
                value = "value; repeatable"
            else:
                value = "value"
            lines.append(f"| `--{_dashed(a)}` | {short} | {value} | {_cell(a.help or '')} |")
        lines.append("")
    if body.strip():
        lines += [body.strip(), ""]
    return "\n".join(lines)


def commands_markdown() -> str:
    """Every task of the ``wf`` collection, grouped by the module that declares it."""
    from invoke import Task

    from workflow.cli import GROUPS, ns

    out: List[str] = []
    seen = set()
    for module in GROUPS:
        names = sorted(n for n in ns.task_names
                       if isinstance(ns[n], Task) and ns[n].body.__module__ == module.__name__)
        if not names:
            continue
        first = re.sub(r"\s*\(SPEC[^)]*\)", "", inspect.cleandoc(module.__doc__ or "").splitlines()[0])
        title, _, about = first.partition(":")
        out += [f"### {title.strip()}", "", about.strip()[:1].upper() + about.strip()[1:], ""]
        for n in names:
            out.append(command_markdown(n, ns[n]))
            seen.add(n)
    rest = sorted(set(ns.task_names) - seen)  # a task whose body lives elsewhere
    if rest:
        out += ["### Other commands", ""] + [command_markdown(n, ns[n]) for n in rest]
    return "\n".join(out).rstrip("\n") + "\n"


def config_markdown() -> str:
    from workflow.config.reference import reference_markdown

    return reference_markdown()


REGIONS: Dict[str, Callable[[], str]] = {"commands": commands_markdown, "config": config_markdown}


def region(text: str, name: str) -> str:
    """The text of region ``name`` in ``text`` (ValueError when its markers are missing)."""
    m = re.search(re.escape(_marker(name, "start")) + r"\n(.*?)" + re.escape(_marker(name, "end")), text, re.S)
    if not m:
        raise ValueError(f"no generated:{name} region (its start and end markers)")
    return m.group(1)


def render(text: str) -> str:
    """``text`` with every generated region replaced by what the code says now."""
    for name, make in REGIONS.items():
        region(text, name)
        start, end = _marker(name, "start"), _marker(name, "end")
        text = re.sub(re.escape(start) + r"\n.*?" + re.escape(end),
                      lambda _m, s=start, e=end, body=make(): f"{s}\n{body}{e}", text, flags=re.S)
    return text


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="regenerate the regions of FILE in place")
    parser.add_argument("--check", metavar="FILE", help="exit 1 when FILE's regions are stale")
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    elif args.check:
        text = Path(args.check).read_text(encoding="utf-8")
        if render(text) != text:
            print(f"{args.check} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
    else:
        for name, make in REGIONS.items():
            print(_marker(name, "start"))
            sys.stdout.write(make())
            print(_marker(name, "end"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
