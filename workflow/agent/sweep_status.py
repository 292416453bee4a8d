"""``sweep.status`` / ``sweep.wait``: every run's state, exit code, duration, metrics
(SPEC §11, parsed incrementally by ``metrics``) and, for runs that did not succeed, the
last log lines; one exec whatever the number of runs."""

import json
import os
import time

from . import metrics, procs, state
from .fsutil import expand
from .protocol import AgentError
from .sweepdirs import control_dir, read_plan, read_status_safe, read_withdrawn, runner_dir, runner_public, runner_state


MAX_BLOCK_SECS = 300.0
TAIL_LINES = 15
#: Seconds one status may spend parsing new log bytes; the rest waits for the next one.
METRICS_BUDGET_SECS = 30.0
NOT_OK = (procs.FAILED, procs.TIMED_OUT, procs.LOST, procs.CANCELLED)


def metrics_options(request):
    """``request["metrics"]`` ({patterns, primary, mode}) checked; AgentError on a bad pattern."""
    opts = dict(request.get("metrics") or {})
    opts["key"] = json.dumps(opts, sort_keys=True, default=str)
    try:
        opts["patterns"] = metrics.compile_patterns(opts.get("patterns"))
    except ValueError as exc:
        raise AgentError("input", str(exc))
    opts["mode"] = "max" if opts.get("mode") == "max" else "min"
    return opts


#: Rows of ended runs, kept between ops by a long-lived agent (``serve.py``; a one-shot
#: agent starts empty) and used only while every file a row is made from (its status,
#: log and metrics.jsonl) is unchanged (inode, size, mtime), for the same request:
#: reading 1000 ended runs again costs 3000 stats instead of reading and parsing them.
_ENDED_ROWS = {}
_MAX_ENDED_ROWS = 50000


def _stamp(paths):
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _run_row(r, sweep_id, runner_alive, tail_lines, ctl, opts, deadline):
    """One run's row; an ended run's row is remembered while its files stay the same."""
    d = r["out_dir"]
    state_path = os.path.join(ctl, "metrics", r["run_id"] + ".json")
    sources = (procs.status_path(d), os.path.join(d, procs.LOG_FILE), os.path.join(d, metrics.METRICS_FILE))
    key = (d, r["run_id"], r.get("line"), r.get("launch", True), sweep_id, runner_alive, tail_lines, opts["key"])
    before = _stamp(sources)
    hit = _ENDED_ROWS.get(key)
    if hit is not None and hit[0] == before:
        return dict(hit[1])
    row = _read_row(r, sweep_id, runner_alive, tail_lines, state_path, opts, deadline)
    if row["state"] in procs.TERMINAL and row.get("metrics_complete") and _stamp(sources) == before:
        if len(_ENDED_ROWS) >= _MAX_ENDED_ROWS:
            _ENDED_ROWS.clear()
        _ENDED_ROWS[key] = (before, dict(row))
    return row


def _read_row(r, sweep_id, runner_alive, tail_lines, state_path, opts, deadline):
    d = r["out_dir"]
    doc = read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
    queued = r.get("launch", True) and runner_alive and (doc is None or doc.get("sweep_id") != sweep_id)
    if doc is None or queued:
        st = procs.PENDING
        doc = doc if not queued else None
    else:
        st = doc.get("state")
    row = {"id": r["run_id"], "state": st, "exit_code": None, "signal": None, "worker_failures": None,
           "duration_secs": None, "metrics": {},
           "log_tail": None, "line": r.get("line"), "attempt": None, "gpus": None, "started_at": None,
           "finished_at": None, "error": None, "dir": d, "best": None, "progress": None}
    if doc is not None:
        row.update(exit_code=doc.get("exit_code"), signal=doc.get("signal_name"),
                   worker_failures=doc.get("worker_failures"), duration_secs=procs.duration_secs(doc),
                   attempt=doc.get("attempt"), gpus=doc.get("cuda_visible_devices"),
                   started_at=doc.get("started_at"), finished_at=doc.get("finished_at"), error=doc.get("error"))
        # A status past its time budget shows what earlier statuses parsed ("metrics_complete": false).
        budget = None if time.monotonic() < deadline else 0
        row.update(metrics.run_summary(d, state_path, opts["patterns"],
                                       opts.get("primary"), opts["mode"], final=st in procs.TERMINAL,
                                       elapsed_secs=row["duration_secs"], budget_bytes=budget, deadline=deadline))
        if st in NOT_OK or st == "unknown":
            row["log_tail"] = procs.tail(d, tail_lines)
    return row


def _sweep_state(plan, runner):
    if plan is None:
        return "none"
    if runner is None:
        return "not_started"
    st = runner.get("state")
    if st in procs.ACTIVE:
        return "running"
    if runner.get("sweep_id") != plan.get("sweep_id"):
        return "unknown"
    if st == procs.SUCCESS:
        return "completed"
    if st == procs.CANCELLED:
        return "cancelled"
    return "runner_dead"


def status(request):
    """``{tail}`` -> ``{state, counts, percent, runs: [...], runner, sweep_id, fsm_state}``."""
    outputs = expand(request["outputs_dir"])
    ctl = control_dir(outputs)
    plan = read_plan(ctl)
    runner = runner_state(ctl)
    tail_lines = int(request.get("tail", TAIL_LINES))
    opts = metrics_options(request)
    deadline = time.monotonic() + METRICS_BUDGET_SECS
    rows = []
    gone = set()
    if plan:
        alive = bool(runner and runner.get("state") in procs.ACTIVE)
        gone = read_withdrawn(ctl, plan.get("sweep_id"))  # moved to another pod of the pool
        for r in plan.get("runs") or []:
            if r["run_id"] in gone:
                continue
            rows.append(_run_row(r, plan.get("sweep_id"), alive, tail_lines, ctl, opts, deadline))
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    done = sum(1 for row in rows if row["state"] in procs.TERMINAL)
    try:
        fsm_state = state.read_state(request)["state"]
    except AgentError:
        fsm_state = None
    stopped = os.path.exists(os.path.join(ctl, "stop"))
    return {
        "state": "cancelled" if stopped and _sweep_state(plan, runner) != "running" else _sweep_state(plan, runner),
        "sweep_id": plan.get("sweep_id") if plan else None,
        "counts": counts,
        "total": len(rows),
        "done": done,
        "percent": round(100.0 * done / len(rows), 1) if rows else 0.0,
        "ok": bool(rows) and all(row["state"] == procs.SUCCESS for row in rows),
        "runs": rows,
        "runner": runner_public(runner),
        "fsm_state": fsm_state,
        "created_at": plan.get("created_at") if plan else None,
        "withdrawn": sorted(gone),
    }


def wait(request):
    """Block until the runner ends or ``wait_secs`` (<= MAX_BLOCK_SECS) pass."""
    ctl = control_dir(request)
    secs = request.get("wait_secs")
    secs = MAX_BLOCK_SECS if secs is None else min(float(secs), MAX_BLOCK_SECS)
    d = runner_dir(ctl)
    finished = True
    if os.path.isfile(procs.status_path(d)):
        _, finished = procs.wait(d, secs, poll=0.02)
    out = status(request)
    out["finished"] = finished
    return out

