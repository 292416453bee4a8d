"""The sweep CSV (SPEC §6): parsing and validation.

RFC 4180 through the ``csv`` module, so quoted fields may hold commas, quotes and
newlines. Header ``run_id,config,seed,overrides,notes`` plus the optional columns
``gpus``, ``timeout_secs`` and ``nodes`` (SPEC §9). Validation never stops at the first problem: every bad
row is reported with the physical line its record starts on, in one ``SweepCsvError``
(an ``InputError``, exit 2).

Blank lines (and rows whose fields are all empty, as spreadsheets export them) are
skipped; a row whose first field starts with ``#`` is a comment (a run_id cannot start
with ``#``). A UTF-8 byte-order mark is tolerated.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from workflow.errors import InputError

REQUIRED_COLUMNS: Tuple[str, ...] = ("run_id", "config", "seed", "overrides", "notes")
OPTIONAL_COLUMNS: Tuple[str, ...] = ("gpus", "timeout_secs", "nodes")
COLUMNS: Tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

#: SPEC §6; a run_id is a directory name and a tmux window name, never a path.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INT_RE = re.compile(r"^[+-]?[0-9]+$")

TEMPLATE = (
    "run_id,config,seed,overrides,notes\n"
    "tiny-s0,configs/tiny.json,0,,baseline\n"
    'tiny-lr-s1,configs/tiny.json,1,lr=0.05 steps=40,"higher lr, more steps"\n'
    'small-s0,configs/small.json,0,"note=""wide, deep"" hidden=64",a quoted override value\n'
)
"""What ``sweep-csv-template`` writes: a comment-free header and three example rows
for the ``examples/`` project (``sweep.workdir: examples``)."""


@dataclass(frozen=True)
class SweepRow:
    """One validated row of a sweep CSV: one launch."""

    line: int
    """Physical line (1-based) of the file where this record starts."""
    run_id: str
    """Unique; matches ``RUN_ID_RE``; the run's directory under ``remote.outputs_dir``."""
    config: str
    """The training config, a path relative to ``sweep.workdir``."""
    seed: int
    """The seed, passed as ``{seed}`` and ``WF_SEED``."""
    overrides: Tuple[str, ...]
    """The ``overrides`` field split like a shell word list; each is one argument."""
    notes: str
    """Free text, never used to build a command."""
    gpus: Optional[int] = None
    """GPUs for this run (``gpus`` column); None: ``sweep.gpus_per_run``."""
    timeout_secs: Optional[int] = None
    """Wall-clock limit (``timeout_secs`` column); None: ``sweep.run_timeout_secs``."""
    nodes: Optional[int] = None
    """Pods the run spans at once (``nodes`` column, SPEC §9); None: ``sweep.nodes``."""

    def to_dict(self) -> dict:
        return {
            "line": self.line,
            "run_id": self.run_id,
            "config": self.config,
            "seed": self.seed,
            "overrides": list(self.overrides),
            "notes": self.notes,
            "gpus": self.gpus,
            "timeout_secs": self.timeout_secs,
            "nodes": self.nodes,
        }


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a sweep CSV."""

    line: int
    """Physical line of the record (1 for the header, 0 for the file as a whole)."""
    message: str


class SweepCsvError(InputError):
    """A sweep CSV that cannot be used; ``problems`` lists every one found."""

    def __init__(self, source: str, problems: Sequence[Problem]):
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line)
        lines = [f"{source}:{p.line}: {p.message}" if p.line else f"{source}: {p.message}" for p in self.problems]
        n = len(self.problems)
        super().__init__(
            f"sweep CSV {source} has {n} problem{'s' if n != 1 else ''}:\n  " + "\n  ".join(lines),
            hint="expected header: " + ",".join(REQUIRED_COLUMNS) + " (optional: " + ", ".join(OPTIONAL_COLUMNS)
            + "); quote a field that holds a comma: \"a, b\"",
        )


def read_sweep_csv(path: os.PathLike) -> List[SweepRow]:
    """Parse and validate the sweep CSV at ``path``; raise ``SweepCsvError`` or ``InputError``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"sweep CSV not found: {p}",
            hint="set sweep.csv (SWEEP_CSV), pass --csv PATH, or run 'wf sweep-csv-template'",
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read sweep CSV {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SweepCsvError(str(p), [Problem(line, "not valid UTF-8 text")]) from None
    return parse_sweep_csv(text, source=str(p))


def parse_sweep_csv(text: str, *, source: str = "<csv>") -> List[SweepRow]:
    """Parse and validate sweep CSV text (see the module docstring)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    problems: List[Problem] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: List[Tuple[int, List[str]]] = []
    prev_end = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The reader drops the rest of the bad line and carries on: report, continue.
            what = str(exc)
            if "unexpected end of data" in what:
                what = "unterminated quoted field (a '\"' is never closed)"
            elif "expected after" in what:
                what += " (inside a quoted field write a quote as \"\")"
            problems.append(Problem(prev_end + 1, f"CSV syntax error: {what}"))
            if reader.line_num == prev_end:
                break
            prev_end = reader.line_num
            continue
        start, prev_end = prev_end + 1, reader.line_num
        if not any(f.strip() for f in fields):
            continue
        records.append((start, fields))
    if text.find("\x00") >= 0 and not problems:
        problems.append(Problem(text[: text.find("\x00")].count("\n") + 1, "NUL character in the file"))

    records = [(line, fields) for line, fields in records if not fields[0].lstrip().startswith("#")]
    if not records:
        if not problems:
            problems.append(Problem(0, "the file is empty (no header, no runs)"))
        raise SweepCsvError(source, problems)

    header_line, header = records[0]
    if any(p.line <= header_line for p in problems):
        raise SweepCsvError(source, problems)  # the header itself is unreadable
    columns = [h.strip() for h in header]
    index: Dict[str, int] = {}
    for i, name in enumerate(columns):
        if name in index:
            problems.append(Problem(header_line, f"header: column '{name}' appears twice"))
        elif name not in COLUMNS:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            tip = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(Problem(header_line, f"header: unknown column '{name}'{tip}"))
        index.setdefault(name, i)
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        problems.append(Problem(header_line, "header: missing column" + ("s " if len(missing) > 1 else " ")
                                + ", ".join(f"'{m}'" for m in missing)))
    if missing or any(p.line == header_line for p in problems):
        # Without a usable header the rows cannot be read column by column.
        raise SweepCsvError(source, problems)

    rows: List[SweepRow] = []
    seen: Dict[str, Tuple[int, str]] = {}
    body = records[1:]
    for line, fields in body:
        row, row_problems = _parse_row(line, fields, index, len(columns))
        problems.extend(row_problems)
        run_id = fields[index["run_id"]].strip() if index["run_id"] < len(fields) else ""
        key = run_id.lower()  # run dirs must not collide on a case-insensitive disk either
        if run_id and key in seen:
            first_line, first_id = seen[key]
            what = "duplicate run_id" if first_id == run_id else f"run_id '{run_id}' differs only by case from"
            problems.append(Problem(line, f"{what} '{first_id}' (first at line {first_line})"))
            continue
        seen.setdefault(key, (line, run_id))
        if row is not None:
            rows.append(row)
    if not body and not problems:
        problems.append(Problem(0, "the file has a header but no runs"))
    if problems:
        raise SweepCsvError(source, sorted(problems, key=lambda p: p.line))
    return rows


def _parse_row(line: int, fields: List[str], index: Dict[str, int], width: int):
    problems: List[Problem] = []

    def bad(message: str) -> None:
        problems.append(Problem(line, message))

    if len(fields) > width and any(f.strip() for f in fields[width:]):
        bad(f"{len(fields)} fields, the header has {width} (an unquoted comma? quote the field: \"a, b\")")
        return None, problems
    # Trailing empty fields beyond the header, or missing trailing fields, are tolerated.
    fields = (fields + [""] * width)[:width]

    def get(name: str) -> str:
        return fields[index[name]] if name in index else ""

    run_id = get("run_id").strip()
    if not run_id:
        bad("run_id is empty")
    elif not RUN_ID_RE.match(run_id):
        bad(f"invalid run_id {run_id!r}: use letters, digits, '.', '_', '-' (first a letter or digit, "
            "at most 128), no '/' or spaces")
    config = get("config").strip()
    if not config:
        bad(f"run {run_id or '?'}: config is empty")
    elif "\x00" in config or "\n" in config or "\r" in config:
        bad(f"run {run_id or '?'}: config holds a control character")
    seed_text = get("seed").strip()
    seed = 0
    if not _INT_RE.match(seed_text):
        bad(f"run {run_id or '?'}: seed must be an integer, got {seed_text!r}")
    else:
        seed = int(seed_text)
    overrides: Tuple[str, ...] = ()
    try:
        overrides = tuple(shlex.split(get("overrides"), comments=False, posix=True))
    except ValueError as exc:
        bad(f"run {run_id or '?'}: cannot split overrides {get('overrides')!r}: {exc}")
    gpus = _positive(get("gpus"), "gpus", run_id, bad)
    timeout = _positive(get("timeout_secs"), "timeout_secs", run_id, bad)
    nodes = _positive(get("nodes"), "nodes", run_id, bad)
    if problems:
        return None, problems
    return SweepRow(line=line, run_id=run_id, config=config, seed=seed, overrides=overrides,
                    notes=get("notes"), gpus=gpus, timeout_secs=timeout, nodes=nodes), problems


def _positive(text: str, name: str, run_id: str, bad) -> Optional[int]:
    text = text.strip()
    if not text:
        return None
    if not _INT_RE.match(text) or int(text) <= 0:
        bad(f"run {run_id or '?'}: {name} must be a positive integer, got {text!r}")
        return None
    return int(text)


def validate_run_id(run_id: str) -> str:
    """``run_id`` if it is a valid run id, else ``InputError`` (for ``--start-at``, ``fetch-run``)."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise InputError(f"invalid run id {run_id!r}: use letters, digits, '.', '_', '-' (first a letter or digit)")
    return run_id


def write_template(path: os.PathLike) -> Path:
    """Write ``TEMPLATE`` at ``path`` (parents created); refuse to overwrite (``InputError``)."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        raise InputError(f"refusing to overwrite {p}", hint="remove it first, or pass --csv with another path")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(p, "x", encoding="utf-8", newline="") as fh:
            fh.write(TEMPLATE)
    except FileExistsError:
        raise InputError(f"refusing to overwrite {p}") from None
    return p
