"""One sweep over a pool of pods (SPEC §8): placement, the placement record, one status.

``sweep-start`` places every selected row on exactly one pod (``place``): the pod that
ran it before when one did (its files are there; an ok run stays ok there and is never
launched again), else the pod with the least work per GPU. Each pod then runs its own
sweep of its rows, packing GPUs as for one pod.

The placement is kept on this machine in ``.podflow/pool-sweep.json`` (``Placement``):
which pod holds each run. Status, wait, stop and fetch go to that pod, and a stale copy
of a run on another pod is never taken for the run. ``merge`` turns the pods' sweep
statuses (read at once, one round trip per pod) into the document of SPEC §6 plus
``pods`` and a ``pod`` per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from workflow.errors import InputError

RECORD = Path(".podflow") / "pool-sweep.json"
TERMINAL = ("success", "failed", "timed_out", "cancelled", "lost")


# ---------------------------------------------------------------- placement


@dataclass(frozen=True)
class PodOffer:
    """What one pod brings to a sweep: its name, GPUs, and the runs it already has."""

    name: str
    gpus: int
    previous: Mapping[str, Optional[str]]
    """run id -> its last state on this pod (None: never ran there)."""


def place(rows: Sequence[tuple], pods: Sequence[PodOffer], recorded: Mapping[str, str] = {}) -> Dict[str, str]:
    """run id -> pod name for ``rows`` (``(run_id, gpus)`` in CSV order) over ``pods``.

    A run that ended ok on a pod stays there (and is not launched again); else a run goes
    back to the pod the last placement gave it, or to a pod where it ran; any other goes
    to the pod whose GPUs have the least work so far (ties: the lower index).
    """
    load = {p.name: 0.0 for p in pods}
    slots = {p.name: float(max(1, p.gpus)) for p in pods}
    placed: Dict[str, str] = {}
    for run_id, gpus in rows:
        ok = [p.name for p in pods if p.previous.get(run_id) == "success"]
        ran = [p.name for p in pods if p.previous.get(run_id) is not None]
        before = [recorded[run_id]] if recorded.get(run_id) in load else []
        chosen = (ok or before or ran or [min(pods, key=lambda p: load[p.name] / slots[p.name]).name])[0]
        placed[run_id] = chosen
        if not ok:
            load[chosen] += max(1, int(gpus or 1))
    return placed


def plan(selected: Sequence[Any], *, dry_run: bool = False, **selection: Any) -> Dict[str, Optional[List[str]]]:
    """pod name -> the run ids it gets (None: every selected row), for ``sweep-start`` on
    the pods ``selected``. A run the placement record gives to a pod outside ``selected``
    (``--pod``) is left alone.

    One pod has nothing to choose: it gets the rows, read here (no round trip). Several
    are first probed at once (a dry run that also asks the state machine, unless this is
    a dry run): the CSV, the configs on each pod, each pod's GPUs and the runs it already
    has. Any pod that fails this stops the whole start, before anything runs: a pod that
    cannot answer may hold runs that must not run twice."""
    from workflow import pool, runtime
    from workflow.sweep.control import start_sweep

    cfg = runtime.config()
    recorded = load(cfg).runs
    names = {p.name for p in selected}
    if len(selected) == 1:
        from workflow.sweep.csvfile import read_sweep_csv
        from workflow.sweep.plan import select_rows

        path = Path(cfg.local_path(selection.get("csv") or cfg.sweep.csv))
        rows = select_rows(read_sweep_csv(path), match=selection.get("match"), start_at=selection.get("start_at"),
                           limit=selection.get("limit"))
        mine = [r.run_id for r in rows if recorded.get(r.run_id, selected[0].name) in names]
        if rows and not mine:
            return {}  # every selected run is held by another pod
        return {selected[0].name: None if len(mine) == len(rows) else mine}
    probed = pool.fan_out(selected, lambda pod: start_sweep(
        runtime.config(), runtime.agent(), runtime.fsm(), dry_run=True, check_state=not dry_run, **selection))
    pool.raise_failures(probed)
    offers = [PodOffer(r.pod.name, len(r.value.gpus), {pr.plan.run_id: pr.previous_state for pr in r.value.runs})
              for r in probed]
    rows = [(pr.plan.run_id, pr.plan.gpus) for pr in probed[0].value.runs
            if recorded.get(pr.plan.run_id, next(iter(names))) in names]
    by_pod: Dict[str, Optional[List[str]]] = {}
    for run_id, name in place(rows, offers, recorded).items():
        by_pod.setdefault(name, []).append(run_id)
    return by_pod


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class Placement:
    """Which pod holds each run of this project's pool sweeps (last placement wins): the
    truth a stale copy of a run on another pod never overrides."""

    runs: Mapping[str, str] = field(default_factory=dict)
    sweep_id: Optional[str] = None
    attempts: Mapping[str, int] = field(default_factory=dict)
    """run id -> the attempt of its current placement (absent: 1); a run re-placed after
    its pod went down counts one more (dstack's ``submission_num``)."""
    ended: Mapping[str, str] = field(default_factory=dict)
    """run id -> the end state last read from its pod: what is known of a run whose pod
    went down (an ok run there is not run again)."""
    csv: Optional[str] = None
    """The CSV the sweep was started from (a run re-placed is planned from it again)."""
    left: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """run id -> the pods it was re-placed away from when they were down: a pod that comes
    back is not given it again (its copy there is stale)."""

    def pod_of(self, run_id: str, default: Optional[str] = None) -> Optional[str]:
        return self.runs.get(run_id, default)

    def attempt_of(self, run_id: str) -> int:
        return int(self.attempts.get(run_id) or 1)

    def held_by(self, pod: str) -> List[str]:
        return [run_id for run_id, name in self.runs.items() if name == pod]

    def holders(self) -> List[str]:
        return sorted(set(self.runs.values()), key=lambda name: int(name[1:]) if name[1:].isdigit() else 0)


def record_path(config) -> Path:
    return Path(config.root) / RECORD


def load(config) -> Placement:
    p = record_path(config)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return Placement()
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: unreadable ({exc})", hint="remove it: the next sweep-start writes it again") from None
    return Placement(runs=dict(doc.get("runs") or {}), sweep_id=doc.get("sweep_id"),
                     attempts=dict(doc.get("attempts") or {}), ended=dict(doc.get("ended") or {}), csv=doc.get("csv"),
                     left={k: list(v) for k, v in (doc.get("left") or {}).items()})


def save(config, placed: Mapping[str, str], sweep_id: Optional[str] = None, *,
         attempts: Optional[Mapping[str, int]] = None, ended: Optional[Mapping[str, str]] = None,
         csv: Optional[str] = None, left: Optional[Mapping[str, str]] = None) -> Placement:
    """Record ``placed``, ``attempts``, ``ended`` and the pods runs ``left`` (merged over
    what was recorded; a run placed anew forgets its old end), atomically."""
    before = load(config)
    runs, tries, done = dict(before.runs), dict(before.attempts), dict(before.ended)
    gone = {k: list(v) for k, v in before.left.items()}
    for run_id, pod in (left or {}).items():
        gone.setdefault(run_id, [])
        if pod not in gone[run_id]:
            gone[run_id].append(pod)
    runs.update(placed)
    for run_id in placed:
        if placed[run_id] != before.runs.get(run_id):
            done.pop(run_id, None)
    tries.update(attempts or {})
    done.update(ended or {})
    doc = {"sweep_id": sweep_id or before.sweep_id, "at": time.time(), "runs": runs, "attempts": tries,
           "ended": done, "csv": csv or before.csv, "left": gone}
    p = record_path(config)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".pool-sweep.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Placement(runs=runs, sweep_id=doc["sweep_id"], attempts=tries, ended=done, csv=doc["csv"], left=gone)


# ---------------------------------------------------------------- one status of many pods


def _sweep_state(states: Sequence[str]) -> str:
    for s in ("running", "runner_dead", "cancelled", "not_started"):
        if s in states:
            return s
    return "completed" if states and all(s == "completed" for s in states) else (states[0] if states else "none")


def merge(read: Sequence[Any], placement: Placement) -> Dict[str, Any]:
    """One ``sweep-status --json`` document from the pods' results (``pool.PodResult`` of
    ``SweepStatus``), in pod order. A run is taken from the pod the placement names (a copy
    elsewhere is stale); a pod that could not be read is ``down`` and the runs it holds
    are ``unknown`` (or the end last read from it, ``Placement.ended``)."""
    from workflow.fsm import order

    runs: List[Dict[str, Any]] = []
    seen = set()
    pods: List[Dict[str, Any]] = []
    for r in read:
        name = r.pod.name
        if not r.ok:
            held = [{"id": run_id, "state": placement.ended.get(run_id) or "unknown", "exit_code": None,
                     "duration_secs": None, "metrics": {}, "log_tail": None, "pod": name}
                    for run_id, pod in placement.runs.items() if pod == name]
            runs += [h for h in held if h["id"] not in seen]
            seen.update(h["id"] for h in held)
            pods.append({"name": name, "state": "down", "counts": {},
                         "error": getattr(r.error, "message", str(r.error))})
            continue
        doc = r.value.to_json()
        mine = [dict(run, pod=name, line=getattr(state, "line", None))
                for run, state in zip(doc["runs"], r.value.runs)
                if placement.pod_of(run["id"], name) == name and run["id"] not in seen]
        seen.update(run["id"] for run in mine)
        runs += mine
        counts: Dict[str, int] = {}
        for run in mine:
            counts[run["state"]] = counts.get(run["state"], 0) + 1
        pods.append({"name": name, "state": "up", "counts": counts, "sweep_id": doc.get("sweep_id"),
                     "sweep_state": doc.get("state"), "fsm_state": doc.get("fsm_state")})
    runs.sort(key=lambda run: (run.get("line") is None, run.get("line") or 0))
    for run in runs:
        run.pop("line", None)
    counts = {}
    for run in runs:
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    done = sum(n for s, n in counts.items() if s in TERMINAL)
    holding = [p for p in pods if p["state"] == "up" and p["counts"]]
    fsm_states = [p["fsm_state"] for p in pods if p.get("fsm_state")]
    return {
        "state": _sweep_state([p["sweep_state"] for p in holding]),
        "counts": counts,
        "percent": round(100.0 * done / len(runs), 1) if runs else 0.0,
        "sweep_id": placement.sweep_id or next((p["sweep_id"] for p in holding), None),
        "fsm_state": min(fsm_states, key=order) if fsm_states else None,
        "runner": {},
        "runs": runs,
        "pods": pods,
    }
