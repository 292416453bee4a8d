"""The fetched runs of ``local.artifacts_dir``, read back with their metric series.

Works from the fetched files alone (``status.json``, ``summary.json``, ``stdout.log``,
``metrics.jsonl``): no pod is needed. The overrides come from the local sweep CSV when
it names the run, else from the launch argv recorded in ``status.json``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from workflow.agent import metrics as M

NOT_OK = ("failed", "timed_out", "lost", "cancelled")
TAIL_LINES = 30


@dataclass(frozen=True)
class RunResult:
    """One fetched run."""

    id: str
    state: Optional[str]
    dir: Path
    pod: Optional[str] = None
    duration_secs: Optional[float] = None
    overrides: str = ""
    last: Mapping[str, Any] = field(default_factory=dict)
    """The last value of each metric."""
    best: Optional[Mapping[str, Any]] = None
    """``{"name", "value", "step"}`` of the primary metric."""
    series: Mapping[str, Sequence[Tuple[float, float]]] = field(default_factory=dict)
    """Each metric's (step, value) points, in log order."""
    log_tail: Optional[str] = None
    """The last log lines of a run that did not succeed."""


def _json(path: Path) -> Dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _tail(path: Path, lines: int) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 65536))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def _csv_overrides(csv_path: Optional[Path]) -> Tuple[List[str], Dict[str, str]]:
    """(run ids in CSV order, run id -> overrides text) of the local sweep CSV, if readable."""
    if csv_path is None or not csv_path.is_file():
        return [], {}
    from workflow.errors import InputError
    from workflow.sweep.csvfile import read_sweep_csv

    try:
        rows = read_sweep_csv(csv_path)
    except InputError:
        return [], {}
    return [r.run_id for r in rows], {r.run_id: shlex.join(r.overrides) for r in rows}


def _script_args(argv: Sequence[str]) -> str:
    """The arguments after the training script in a recorded launch argv."""
    for i, arg in enumerate(argv):
        if str(arg).endswith(".py"):
            return shlex.join(argv[i + 1:])
    return shlex.join(argv)


def load_runs(artifacts: Path, *, csv_path: Optional[Path] = None, patterns: Sequence[str] = (),
              primary: Optional[str] = None, mode: str = "min", pods: Mapping[str, str] = {}) -> List[RunResult]:
    """Every run dir under ``artifacts`` (one with a ``status.json``), CSV order first;
    ``pods``: run id -> the pod that ran it (a pool's placement record)."""
    order, overrides = _csv_overrides(csv_path)
    compiled = M.compile_patterns(patterns)
    dirs = {p.name: p for p in sorted(artifacts.iterdir()) if (p / "status.json").is_file()} \
        if artifacts.is_dir() else {}
    names = [n for n in order if n in dirs] + [n for n in dirs if n not in order]
    out = []
    for name in names:
        d = dirs[name]
        status = _json(d / "status.json")
        summary = _json(d / "summary.json")
        state = status.get("state")
        m, _ = M.read_run(str(d), None, compiled, series=True, final=True)
        argv = status.get("argv") or []
        duration = summary.get("duration_secs")
        out.append(RunResult(
            id=name, state=state, dir=d, pod=pods.get(name),
            duration_secs=duration if isinstance(duration, (int, float)) else None,
            overrides=overrides.get(name, _script_args(argv)),
            last=dict(m.last), best=m.best(primary, mode), series={k: [tuple(p) for p in v] for k, v in m.series.items()},
            log_tail=_tail(d / "stdout.log", TAIL_LINES) if state in NOT_OK else None))
    return out
