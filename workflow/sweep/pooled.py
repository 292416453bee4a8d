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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from workflow.errors import ExitCode, InputError

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
    """run id -> pod name (node 0's for a multi-node run): ``place_nodes``' choice."""
    return {run_id: chosen[0] for run_id, chosen in place_nodes(rows, pods, recorded).items()}


def place_nodes(rows: Sequence[tuple], pods: Sequence[PodOffer], recorded: Mapping[str, str] = {},
                recorded_nodes: Mapping[str, Sequence[str]] = {}) -> Dict[str, Tuple[str, ...]]:
    """run id -> its pods (node 0 first; one pod for most runs) for ``rows`` (``(run_id,
    gpus)`` or ``(run_id, gpus, nodes)`` in CSV order) over ``pods``.

    A run that ended ok on a pod stays there (and is not launched again); else a run goes
    back to the pod the last placement gave it, or to a pod where it ran; any other goes
    to the pod whose GPUs have the least work so far (ties: the lower index). A run on n
    nodes keeps the pods it had when they are all still in the pool, else takes the n
    least loaded pods (in pool order); each of them gets its GPUs' share of the load.
    """
    load = {p.name: 0.0 for p in pods}
    slots = {p.name: float(max(1, p.gpus)) for p in pods}
    order = [p.name for p in pods]
    placed: Dict[str, Tuple[str, ...]] = {}
    for row in rows:
        run_id, gpus = row[0], row[1]
        nodes = int((row[2] if len(row) > 2 else 1) or 1)
        if nodes > 1:
            before = tuple(recorded_nodes.get(run_id) or ())
            if len(before) == nodes and all(name in load for name in before):
                chosen = before
            else:
                least = sorted(order, key=lambda name: (load[name] / slots[name], order.index(name)))[:nodes]
                chosen = tuple(sorted(least, key=order.index))
            placed[run_id] = chosen
            for name in chosen:
                load[name] += max(1, int(gpus or 1))
            continue
        ok = [p.name for p in pods if p.previous.get(run_id) == "success"]
        ran = [p.name for p in pods if p.previous.get(run_id) is not None]
        before1 = [recorded[run_id]] if recorded.get(run_id) in load else []
        one = (ok or before1 or ran or [min(pods, key=lambda p: load[p.name] / slots[p.name]).name])[0]
        placed[run_id] = (one,)
        if not ok:
            load[one] += max(1, int(gpus or 1))
    return placed


@dataclass(frozen=True)
class PoolPlan:
    """Where ``sweep-start`` puts the selected rows."""

    runs: Mapping[str, Optional[List[str]]]
    """pod name -> the run ids it gets (None: every selected row); a multi-node run is
    listed under each of its pods."""
    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """pod name -> run id -> its ``multinode.Node`` there (multi-node runs only)."""
    unreachable: Tuple[Any, ...] = ()
    """The pods that could not be reached (``pool.PodResult`` with its error): left out."""
    left: Mapping[str, str] = field(default_factory=dict)
    """run id -> the unreachable pod the record gave it to, which it now leaves (if that
    pod comes back, its copy is stale)."""
    probed: Mapping[str, Any] = field(default_factory=dict)
    """pod name -> its probe and state check (``control.Probed``), for its start to reuse."""

    @property
    def gangs(self) -> Dict[str, Any]:
        """run id -> node 0's ``Node`` (it names every pod of the run)."""
        return {run_id: node for mine in self.nodes.values() for run_id, node in mine.items() if node.rank == 0}


def plan(selected: Sequence[Any], *, dry_run: bool = False, **selection: Any) -> PoolPlan:
    """Where each selected row goes, for ``sweep-start`` on the pods ``selected``. A run
    the placement record gives to a pod outside ``selected`` (``--pod``) is left alone.

    One pod has nothing to choose: it gets the rows, read here (no round trip); a row on
    several nodes cannot run there (exit 2). Several are first probed at once (a dry run
    that also asks the state machine, unless this is a dry run): the CSV, the configs on
    each pod, each pod's GPUs and the runs it already has; each pod's start reuses its
    probe (``PoolPlan.probed``). A pod that cannot be reached
    is left out (``PoolPlan.unreachable``) and the rows go to the pods that answer; its
    runs the record knows ended ok stay ok there (not run again), its others move (the
    record's ``left``: its copies lose if it comes back, as after ``sweep-recover``). Any
    other failure (bad CSV, a refusing state machine) stops the whole start, before
    anything runs, and so does no pod answering. Multi-node runs then get their
    rendezvous (``rendezvous``)."""
    from workflow import pool, runtime
    from workflow.sweep import multinode
    from workflow.sweep.control import start_sweep

    cfg = runtime.config()
    record = load(cfg)
    recorded = record.runs
    names = {p.name for p in selected}
    if len(selected) == 1:
        from workflow.sweep.csvfile import read_sweep_csv
        from workflow.sweep.plan import select_rows

        path = Path(cfg.local_path(selection.get("csv") or cfg.sweep.csv))
        rows = select_rows(read_sweep_csv(path), match=selection.get("match"), start_at=selection.get("start_at"),
                           limit=selection.get("limit"))
        mine = [r.run_id for r in rows if recorded.get(r.run_id, selected[0].name) in names]
        for r in rows:
            if r.run_id in mine:
                multinode.check_fits(r.run_id, r.nodes or int(cfg.get("sweep.nodes", 1) or 1), 1)
        if rows and not mine:
            return PoolPlan({})  # every selected run is held by another pod
        return PoolPlan({selected[0].name: None if len(mine) == len(rows) else mine})
    probed = pool.fan_out(selected, lambda pod: start_sweep(
        runtime.config(), runtime.agent(), runtime.fsm(), dry_run=True, check_state=not dry_run, placing=True,
        **selection))
    unreachable = tuple(r for r in probed if not r.ok and int(getattr(r.error, "exit_code", 1)) == ExitCode.UNREACHABLE)
    if len(unreachable) < len(probed) and all(r.ok or r in unreachable for r in probed):
        probed = [r for r in probed if r.ok]
    pool.raise_failures(probed)
    gone = {r.pod.name for r in unreachable}
    offers = [PodOffer(r.pod.name, len(r.value.gpus), {pr.plan.run_id: pr.previous_state for pr in r.value.runs})
              for r in probed]
    planned = {pr.plan.run_id: pr for pr in probed[0].value.runs
               if recorded.get(pr.plan.run_id, next(iter(names))) in names
               and not (recorded.get(pr.plan.run_id) in gone and record.ended.get(pr.plan.run_id) == "success")}
    left = {run_id: recorded[run_id] for run_id in planned if recorded.get(run_id) in gone}
    for pr in planned.values():
        multinode.check_fits(pr.plan.run_id, pr.plan.nodes, len(probed))
    rows = [(run_id, pr.plan.gpus, pr.plan.nodes) for run_id, pr in planned.items()]
    by_pod: Dict[str, Optional[List[str]]] = {}
    gangs: Dict[str, Tuple[str, ...]] = {}
    for run_id, chosen in place_nodes(rows, offers, recorded, record.nodes).items():
        for name in chosen:
            by_pod.setdefault(name, []).append(run_id)
        if len(chosen) > 1:
            gangs[run_id] = chosen
    answering = [p for p in selected if p.name not in gone]
    nodes = rendezvous(gangs, {r.pod.name: r for r in probed}, answering) if gangs else {}
    return PoolPlan(by_pod, nodes, unreachable, left, {r.pod.name: r.value.probed for r in probed})


def rendezvous(gangs: Mapping[str, Tuple[str, ...]], probed: Mapping[str, Any],
                selected: Sequence[Any], attempts: Mapping[str, int] = {}) -> Dict[str, Dict[str, Any]]:
    """Each node of each multi-node run: node 0's address and a port free there (one
    ``net.facts`` call per pod, all at once), the interface holding each pod's address,
    the rendezvous id from node 0's attempt (or ``attempts``: a run re-placed), and
    whether the run starts at all (its nodes' last states in ``probed``, the pods' dry
    runs, ``multinode.combine``; a pod not there has no earlier state)."""
    from workflow import pool, runtime
    from workflow.sweep import multinode

    involved = [p for p in selected if any(p.name in chosen for chosen in gangs.values())]
    addrs = pool.values(pool.fan_out(involved, lambda pod: multinode.pod_addr(runtime.config(), pod)))
    multinode.check_distinct_addrs(gangs, addrs)
    # torch ranks a run's nodes by address (a string): node 0 is the lowest (see multinode)
    gangs = {run_id: tuple(sorted(chosen, key=lambda name: addrs[name]))
             for run_id, chosen in gangs.items()}
    # two ports per run on its node 0: the rendezvous and the nodes' watchdogs (node_watch)
    ports_wanted = {p.name: 2 * sum(1 for chosen in gangs.values() if chosen[0] == p.name) for p in involved}
    net = pool.values(pool.fan_out(involved, lambda pod: runtime.agent().call(
        "net.facts", timeout=60, addr=addrs[pod.name], ports=ports_wanted[pod.name])))
    free = {name: list(doc["ports"]) for name, doc in net.items()}
    out: Dict[str, Dict[str, Any]] = {}
    for run_id, chosen in gangs.items():
        first = chosen[0]
        before = {pr.plan.run_id: pr for pr in _runs_of(probed, first)}.get(run_id)
        attempt = attempts.get(run_id) or (before.resume.attempt if before is not None and before.resume else 1)
        endpoint = f"{net[first]['addr']}:{free[first].pop(0)}"
        watch = f"{net[first]['addr']}:{free[first].pop(0)}"
        previous = [{"rank": i, "state": next((pr.previous_state for pr in _runs_of(probed, name)
                                                if pr.plan.run_id == run_id), None)}
                    for i, name in enumerate(chosen)]
        states = [n["state"] for n in previous]
        prev = None if all(s is None for s in states) else multinode.combine(
            [dict(n, state=n["state"] or "pending") for n in previous])
        for rank, name in enumerate(chosen):
            out.setdefault(name, {})[run_id] = multinode.Node(
                rank=rank, pods=tuple(chosen), endpoint=endpoint, rdzv_id=f"{run_id}-{attempt}",
                addr=addrs[name], iface=net[name].get("iface"), previous=prev, watch=watch)
    return out


def _runs_of(probed: Mapping[str, Any], name: str) -> Sequence[Any]:
    return probed[name].value.runs if name in probed else ()


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class Placement:
    """Which pod holds each run of this project's pool sweeps (last placement wins): the
    truth a stale copy of a run on another pod never overrides."""

    runs: Mapping[str, str] = field(default_factory=dict)
    """run id -> the pod that holds it (node 0's for a multi-node run)."""
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
    nodes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """run id -> its pods, node 0 first (multi-node runs only)."""
    placed: Mapping[str, int] = field(default_factory=dict)
    """run id -> how many times it was placed: a client whose view is older than the last
    placement leaves the run alone, even one placed on the same pod again (a withdrawn run
    re-placed where it was, while another client meant to move it)."""

    def same_placement(self, other: "Placement", run_id: str) -> bool:
        """Whether ``run_id`` was placed no more since ``other`` was read."""
        return (self.pod_of(run_id) == other.pod_of(run_id)
                and list(self.nodes.get(run_id) or ()) == list(other.nodes.get(run_id) or ())
                and self.placed.get(run_id, 0) == other.placed.get(run_id, 0))

    def pod_of(self, run_id: str, default: Optional[str] = None) -> Optional[str]:
        return self.runs.get(run_id, default)

    def attempt_of(self, run_id: str) -> int:
        return int(self.attempts.get(run_id) or 1)

    def held_by(self, pod: str) -> List[str]:
        return [run_id for run_id, name in self.runs.items() if name == pod]

    def holders(self) -> List[str]:
        held = set(self.runs.values()).union(*[set(pods) for pods in self.nodes.values()])
        return sorted(held, key=lambda name: int(name[1:]) if name[1:].isdigit() else 0)


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
                     left={k: list(v) for k, v in (doc.get("left") or {}).items()},
                     nodes={k: list(v) for k, v in (doc.get("nodes") or {}).items()},
                     placed=dict(doc.get("placed") or {}))


def save(config, placed: Mapping[str, str], sweep_id: Optional[str] = None, *,
         attempts: Optional[Mapping[str, int]] = None, ended: Optional[Mapping[str, str]] = None,
         csv: Optional[str] = None, left: Optional[Mapping[str, Any]] = None,
         nodes: Optional[Mapping[str, Sequence[str]]] = None) -> Placement:
    """Record ``placed``, ``attempts``, ``ended``, the pods runs ``left`` and the pods of
    multi-node runs ``nodes`` (merged over what was recorded; a run placed anew forgets
    its old end; a run placed on one pod again is no longer multi-node), atomically."""
    before = load(config)
    runs, tries, done = dict(before.runs), dict(before.attempts), dict(before.ended)
    gone = {k: list(v) for k, v in before.left.items()}
    for run_id, pods in (left or {}).items():  # one pod, or several (a multi-node run's)
        gone.setdefault(run_id, [])
        for pod in [pods] if isinstance(pods, str) else pods:
            if pod not in gone[run_id]:
                gone[run_id].append(pod)
    runs.update(placed)
    count = dict(before.placed)
    for run_id in placed:
        count[run_id] = count.get(run_id, 0) + 1
    for run_id in placed:
        if placed[run_id] != before.runs.get(run_id):
            done.pop(run_id, None)
    tries.update(attempts or {})
    done.update(ended or {})
    gangs = {k: list(v) for k, v in before.nodes.items() if k not in placed}
    gangs.update({k: list(v) for k, v in (nodes or {}).items()})
    doc = {"sweep_id": sweep_id or before.sweep_id, "at": time.time(), "runs": runs, "attempts": tries,
           "ended": done, "csv": csv or before.csv, "left": gone, "nodes": gangs, "placed": count}
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
    return Placement(runs=runs, sweep_id=doc["sweep_id"], attempts=tries, ended=done, csv=doc["csv"], left=gone,
                     nodes=gangs, placed=count)


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
    are ``unknown`` (or the end last read from it, ``Placement.ended``). A multi-node run
    is shown once: node 0's entry, its state combined over its nodes
    (``multinode.combine``), and ``nodes``: each node's pod and state; while one of its
    pods cannot be read, the end last recorded (``Placement.ended``), else ``pending``
    (it waits to be re-placed whole)."""
    from workflow.fsm import order
    from workflow.sweep import multinode

    runs: List[Dict[str, Any]] = []
    seen = set()
    pods: List[Dict[str, Any]] = []
    node_docs: Dict[str, Dict[str, Dict[str, Any]]] = {}  # run id -> pod -> its node's entry
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
        for run, state in zip(doc["runs"], r.value.runs):
            if name in placement.nodes.get(run["id"], ()):
                node_docs.setdefault(run["id"], {})[name] = dict(run, finished_at=state.finished_at)
        mine = [dict(run, pod=name, line=getattr(state, "line", None))
                for run, state in zip(doc["runs"], r.value.runs)
                if placement.pod_of(run["id"], name) == name and run["id"] not in seen]
        seen.update(run["id"] for run in mine)
        # runs it holds that ended but that its sweep no longer lists (a replaced pod's)
        gone = [{"id": run_id, "state": placement.ended[run_id], "exit_code": None, "duration_secs": None,
                 "metrics": {}, "log_tail": None, "pod": name} for run_id in placement.held_by(name)
                if run_id not in seen and run_id in placement.ended]
        seen.update(run["id"] for run in gone)
        mine += gone
        runs += mine
        counts: Dict[str, int] = {}
        for run in mine:
            counts[run["state"]] = counts.get(run["state"], 0) + 1
        pods.append({"name": name, "state": "up", "counts": counts, "sweep_id": doc.get("sweep_id"),
                     "sweep_state": doc.get("state"), "fsm_state": doc.get("fsm_state"),
                     "holds_nodes": any(name in gang[1:] for gang in placement.nodes.values())})
    down = {p["name"] for p in pods if p["state"] == "down"}
    for run in runs:
        gang = placement.nodes.get(run["id"])
        if not gang:
            continue
        entries = node_docs.get(run["id"], {})
        run["nodes"] = [{"rank": i, "pod": name,
                         "state": "unknown" if name in down else entries.get(name, {}).get("state", "pending"),
                         "exit_code": entries.get(name, {}).get("exit_code"),
                         "finished_at": entries.get(name, {}).get("finished_at")} for i, name in enumerate(gang)]
        run["state"] = multinode.combine(run["nodes"])
        if any(name in down for name in gang):  # what is known of it, else it waits to be re-placed whole
            run["state"] = placement.ended.get(run["id"]) or "pending"
        if run["state"] != "success" and run.get("exit_code") == 0:
            run["exit_code"] = next((n["exit_code"] for n in run["nodes"] if n["exit_code"]), run["exit_code"])
    runs.sort(key=lambda run: (run.get("line") is None, run.get("line") or 0))
    for run in runs:
        run.pop("line", None)
    for p in pods:
        if p["state"] == "up":
            p["counts"] = {}
            for run in runs:
                if run.get("pod") == p["name"]:
                    p["counts"][run["state"]] = p["counts"].get(run["state"], 0) + 1
    counts = {}
    for run in runs:
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    done = sum(n for s, n in counts.items() if s in TERMINAL)
    holding = [p for p in pods if p["state"] == "up" and (p["counts"] or p.pop("holds_nodes", False))]
    for p in pods:
        p.pop("holds_nodes", None)
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
