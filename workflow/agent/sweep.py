"""The sweep on the pod (SPEC §5-§6): its files and its ops.

Layout under ``<outputs_dir>``::

    _control/sweep/plan.json        the running sweep: id, settings, every run's launch
    _control/sweep/runner/          the runner itself, a tracked job (status.json with the
                                    wrapper's pid + nonce, stdout.log = the runner's log)
    _control/sweep/stop             written by sweep.stop: launch nothing more
    _control/sweep/.lock            sweep.start / sweep.stop exclusion
    _manifests/sweep-latest.csv     the CSV of the running sweep (+ timestamped copies
                                    with the effective config, ``sweep-<stamp>.*``)
    <run_id>/                       one run: status.json, stdout.log, command.sh, summary.json

Ops (one exec each, JSON in/out):

* ``sweep.probe``: the pod's GPUs, which configs are missing, the runner's liveness,
  the state machine's state, every planned run's last state (the repair pass included)
  and earlier files (``resume.earlier_files``): what ``sweep-start`` needs before it
  decides, in one call;
* ``sweep.start``: under the sweep lock, refuse when a runner is alive, move the state
  to SWEEP_RUNNING (compare-and-set against what the client saw), write the manifests
  and the plan, start ``sweep-run`` in tmux window ``sweep`` of the sweep session;
* ``sweep.status``: every run's state, exit code, duration, metrics (SPEC §11) and,
  for runs that did not succeed, the last log lines;
* ``sweep.wait``: block until the runner ends (bounded), then the status;
* ``sweep.stop``: no more launches, every active run cancelled (its whole process
  group, torchrun workers included), the runner ended;
* ``sweep.end_run``: ``{run_id, state, reason}``: a node of a multi-node run ends here
  because another of its nodes could not start: running, it is ended with ``state``
  and ``reason``; not launched yet, it never is and its status says so (under the
  launch lock: one or the other);
* ``sweep.withdraw``: a pool moves runs away from this pod: under the launch lock (the
  runner launches under it too) each run not yet launched by this sweep is marked
  withdrawn (``_control/sweep/withdrawn.json``), so the runner never launches it; with
  ``cancel`` a copy already running is cancelled too (a pod back from the dead).

The ops are here (probe, start, stop) and in ``sweep_status`` (status, wait); the
runner itself (``COMMANDS["sweep-run"]``) is ``sweep_runner``; the paths and the reads
they share are ``sweepdirs``; the pod's GPUs ``gpus``.
"""

import os
import shlex
import time
import uuid

from . import procs, resume, state
from .fsutil import expand, locked, makedirs, utcnow, write_atomic, write_json_atomic
from .gpus import cache_path as gpus_cache, detect_gpus
from .job_status import finish_fields
from .protocol import AgentError
from .sweep_runner import runner_main
from .sweep_status import status, wait
from .sweepdirs import (
    RUN_COMMAND,
    RUNNER_ID,
    control_dir,
    read_plan,
    read_status_safe,
    read_withdrawn,
    run_dir,
    runner_dir,
    runner_public,
    runner_state,
    terminate_all,
    withdrawn_path,
)


def probe(request):
    """``{workdir, sweep_workdir, entrypoint, configs: [[line, path]], run_ids, remote_env,
    data_dir}`` -> what sweep-start needs to decide, in one exec."""
    outputs = expand(request["outputs_dir"])
    workdir = expand(request.get("workdir") or ".")
    run_root = os.path.normpath(os.path.join(workdir, request.get("sweep_workdir") or "."))
    missing = []
    for line, path in request.get("configs") or []:
        if not os.path.isfile(os.path.join(run_root, path)):
            missing.append([line, path])
    entry = request.get("entrypoint")
    entry_missing = bool(entry) and not os.path.isfile(os.path.join(run_root, entry))
    gpus, source = detect_gpus(request.get("remote_env"), os.path.join(workdir, ".venv", "bin", "python"),
                               cache=gpus_cache(outputs))
    runs = {}
    for run_id in request.get("run_ids") or []:
        d = run_dir(outputs, run_id)
        doc = read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
        if doc is not None:
            runs[run_id] = {"state": doc.get("state"), "attempt": doc.get("attempt")}
        if doc is not None or os.path.isdir(d):
            runs.setdefault(run_id, {})["earlier"] = resume.earlier_files(d)
    ctl = control_dir(outputs)
    try:
        fsm_state = state.read_state(request)["state"]
    except AgentError:
        fsm_state = None  # the client reads it itself, and reports what is wrong with it
    return {
        "outputs_dir": outputs,
        "workdir": workdir,
        "run_root": run_root,
        "run_root_exists": os.path.isdir(run_root),
        "data_dir": expand(request["data_dir"]) if request.get("data_dir") else None,
        "venv_bin": os.path.join(workdir, ".venv", "bin"),
        "gpus": gpus,
        "gpu_source": source,
        "missing_configs": missing,
        "entrypoint_missing": entry_missing,
        "runner": runner_public(runner_state(ctl)),
        "runs": runs,
        "fsm_state": fsm_state,
    }


def _stamp():
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def start(request):
    """``{plan: {runs: [...]}, settings, csv_text, config, expect, enforce, by, session,
    remote_env}`` -> ``{sweep_id, runner, manifests, state}``.

    Refused (kind ``refused``) when a runner is alive or the state moved since the
    client looked: two sweep-starts at once, exactly one starts."""
    outputs = expand(request["outputs_dir"])
    ctl = control_dir(outputs)
    makedirs(ctl)
    runs = (request.get("plan") or {}).get("runs") or []
    for r in runs:
        procs.validate_id(r.get("run_id"), "run id")
        if os.path.normpath(r["out_dir"]) != os.path.join(outputs, r["run_id"]):
            raise AgentError("input", "run %s: out_dir %s is not under %s" % (r["run_id"], r["out_dir"], outputs))
    settings = dict(request.get("settings") or {})
    with locked(os.path.join(ctl, ".lock")):
        runner = runner_state(ctl)
        if runner is not None and runner.get("state") in procs.ACTIVE:
            st = state.read_state(request)
            raise AgentError("refused", "a sweep runner is already running (pid %s)" % runner.get("pid"),
                             command="sweep-start", current=st["state"] + " (runner alive)",
                             allowed=["CHECKED_OUT", "SWEEP_COMPLETED", "SWEEP_RUNNING whose runner is dead"])
        # Runs a dead runner left "running" become lost now (their leftovers killed).
        for r in runs:
            if os.path.isfile(procs.status_path(r["out_dir"])):
                read_status_safe(r["out_dir"])
        expect = request.get("expect")
        seen = state.read_state(request)["state"] if expect is None else None
        moved = state.transition(dict(request, to="SWEEP_RUNNING", trigger="sweep-start",
                                      expect=expect if expect is not None else [seen],
                                      set={"sweep_started_at": utcnow()}))
        before = moved["history"][-1]["from"]
        sweep_id = _stamp() + "-" + uuid.uuid4().hex[:6]
        try:
            manifests = os.path.join(outputs, "_manifests")
            makedirs(manifests)
            csv_text = request.get("csv_text") or ""
            write_atomic(os.path.join(manifests, "sweep-latest.csv"), csv_text)
            write_atomic(os.path.join(manifests, "sweep-%s.csv" % sweep_id), csv_text)
            write_json_atomic(os.path.join(manifests, "sweep-%s.json" % sweep_id), {
                "sweep_id": sweep_id, "started_at": utcnow(), "by": request.get("by"),
                "csv": request.get("csv_name"), "config": request.get("config") or {},
                "settings": settings, "runs": runs})
            try:
                os.unlink(os.path.join(ctl, "stop"))
            except OSError:
                pass
            plan = {"sweep_id": sweep_id, "outputs_dir": outputs, "created_at": utcnow(), "settings": settings,
                    "runs": runs, "state_file": request.get("state_file"), "enforce": request.get("enforce", True)}
            write_json_atomic(os.path.join(ctl, "plan.json"), plan)
            d = runner_dir(ctl)
            makedirs(d)
            argv = procs.agent_argv() + [RUN_COMMAND, ctl, sweep_id]
            procs.prepare(d, RUNNER_ID, "exec " + " ".join(shlex.quote(a) for a in argv) + "\n",
                          workdir=ctl, extra={"sweep_id": sweep_id})
            tmux = {"socket": request.get("socket") or procs.tmux_socket_name(outputs),
                    "session": request.get("session") or "podflow-sweep"}
            doc = procs.launch(d, env=procs.job_env(request.get("remote_env") or {}),
                               tmux=None if request.get("no_tmux") else tmux, window_name="sweep")
        except Exception:
            try:
                state.transition(dict(request, to=before, trigger="sweep-start-failed", expect=["SWEEP_RUNNING"],
                                      reason="the sweep runner did not start"))
            except AgentError:
                pass
            raise
    return {"sweep_id": sweep_id, "runner": runner_public(doc), "state": "SWEEP_RUNNING", "from": before,
            "manifests": {"latest": os.path.join(manifests, "sweep-latest.csv"),
                          "csv": os.path.join(manifests, "sweep-%s.csv" % sweep_id),
                          "config": os.path.join(manifests, "sweep-%s.json" % sweep_id)}}


def stop(request):
    """No more launches; every active run cancelled; the runner ended. The client moves
    the state (SWEEP_RUNNING -> CHECKED_OUT)."""
    outputs = expand(request["outputs_dir"])
    ctl = control_dir(outputs)
    grace = float(request.get("grace_secs") if request.get("grace_secs") is not None else procs.GRACE_SECS)
    plan = read_plan(ctl) or {"runs": []}
    with locked(os.path.join(ctl, ".lock")):
        with locked(os.path.join(ctl, ".launch.lock")):
            write_atomic(os.path.join(ctl, "stop"), utcnow() + "\n")
        active = []
        for r in plan.get("runs") or []:
            if os.path.isfile(procs.status_path(r["out_dir"])):
                doc = read_status_safe(r["out_dir"])
                if doc.get("state") in procs.ACTIVE:
                    active.append(r["out_dir"])
        cancelled = [d for d, was in terminate_all(active, grace).items() if was]
        runner_was_active = False
        d = runner_dir(ctl)
        if os.path.isfile(procs.status_path(d)):
            runner_was_active = procs.terminate(d, grace_secs=grace + 5.0)[1]
        # Anything launched in between (there should be none) goes too.
        late = [r["out_dir"] for r in plan.get("runs") or []
                if os.path.isfile(procs.status_path(r["out_dir"]))
                and read_status_safe(r["out_dir"]).get("state") in procs.ACTIVE]
        cancelled += [d2 for d2, was in terminate_all(late, grace).items() if was]
    out = status(request)
    out["cancelled"] = sorted(os.path.basename(x) for x in cancelled)
    out["runner_was_active"] = runner_was_active
    return out


def end_run(request):
    """``{run_id, state, reason}`` -> ``{run_id, ended: "running"|"not launched"|None}``."""
    outputs = expand(request["outputs_dir"])
    ctl = control_dir(outputs)
    plan = read_plan(ctl) or {}
    r = dict((x["run_id"], x) for x in plan.get("runs") or []).get(request["run_id"])
    end = (request.get("state") or procs.FAILED, request.get("reason") or "ended by podflow")
    if r is None:
        return {"run_id": request["run_id"], "ended": None}
    d = r["out_dir"]
    with locked(os.path.join(ctl, ".launch.lock")):
        doc = read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
        launched = doc is not None and doc.get("sweep_id") == plan.get("sweep_id")
        if not launched:  # the runner skips a run its sweep already ended
            makedirs(d)
            procs.prepare(d, r["run_id"], "# never launched: %s\n" % end[1],
                          attempt=int(r.get("attempts_before") or 0) + 1,
                          extra={"sweep_id": plan.get("sweep_id"), "line": r.get("line"), "argv": r.get("argv")})
            procs.update_status(d, **finish_fields(end[0], None, end[1]))
            return {"run_id": r["run_id"], "ended": "not launched"}
    if doc.get("state") in procs.ACTIVE:
        terminate_all([d], float(request.get("grace_secs") or procs.GRACE_SECS), end=end)
        return {"run_id": r["run_id"], "ended": "running"}
    return {"run_id": r["run_id"], "ended": None}


def withdraw(request):
    """``{run_ids, cancel}`` -> ``{withdrawn: [...], kept: {run_id: why}, cancelled: [...]}``.

    A run is withdrawn only when this pod's sweep has not launched it (or, with
    ``cancel``, whatever its state but ``success``); the check and the mark happen under
    the lock the runner holds while it launches, so a run is either launched here or
    withdrawn, never both. Asking twice withdraws once: the second answer keeps it."""
    outputs = expand(request["outputs_dir"])
    ctl = control_dir(outputs)
    plan = read_plan(ctl)
    cancel = bool(request.get("cancel"))
    wanted = list(request.get("run_ids") or [])
    if not plan:
        return {"withdrawn": [], "kept": dict((r, "no sweep on this pod") for r in wanted), "cancelled": []}
    sweep_id = plan.get("sweep_id")
    by_id = dict((r["run_id"], r) for r in plan.get("runs") or [])
    took, kept, active = [], {}, []
    with locked(os.path.join(ctl, ".launch.lock")):
        gone = read_withdrawn(ctl, sweep_id)
        for run_id in wanted:
            r = by_id.get(run_id)
            if r is None or run_id in gone:
                kept[run_id] = "not in this pod's sweep" if r is None else "already withdrawn"
                continue
            d = r["out_dir"]
            doc = read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
            launched = doc is not None and doc.get("sweep_id") == sweep_id
            if doc is not None and doc.get("state") == procs.SUCCESS:
                kept[run_id] = "ended ok"
                continue
            if launched and not cancel:
                kept[run_id] = "launched (%s)" % doc.get("state")
                continue
            if doc is not None and doc.get("state") in procs.ACTIVE:
                active.append(d)
            took.append(run_id)
        if took:
            write_json_atomic(withdrawn_path(ctl), {"sweep_id": sweep_id, "runs": sorted(gone | set(took)),
                                                    "at": utcnow()})
    grace = float(request.get("grace_secs") if request.get("grace_secs") is not None else procs.GRACE_SECS)
    cancelled = [os.path.basename(d) for d, was in terminate_all(active, grace).items() if was]
    return {"withdrawn": took, "kept": kept, "cancelled": sorted(cancelled)}


OPS = {
    "sweep.probe": probe,
    "sweep.start": start,
    "sweep.status": status,
    "sweep.wait": wait,
    "sweep.stop": stop,
    "sweep.withdraw": withdraw,
    "sweep.end_run": end_run,
}

COMMANDS = {RUN_COMMAND: runner_main}

