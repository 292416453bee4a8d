"""The sweep runner on the pod (SPEC §5-§6), driven through ``procs``.

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
  every planned run's last state (the repair pass included): what ``sweep-start``
  needs before it decides, in one call;
* ``sweep.start``: under the sweep lock, refuse when a runner is alive, move the state
  to SWEEP_RUNNING (compare-and-set against what the client saw), write the manifests
  and the plan, start ``sweep-run`` in tmux window ``sweep`` of the sweep session;
* ``sweep.status``: every run's state, exit code, duration, latest metrics from its log
  and, for runs that did not succeed, the last log lines;
* ``sweep.wait``: block until the runner ends (bounded), then the status;
* ``sweep.stop``: no more launches, every active run cancelled (its whole process
  group, torchrun workers included), the runner ended.

The runner (``COMMANDS["sweep-run"]``) launches each run with ``procs.launch`` (detached,
``die_with_parent``: if the runner is killed its runs' wrappers die with it and the
runs read ``lost``), packs runs on disjoint GPU sets (first fit, in CSV order), waits
on its children's exits (SIGCHLD through a wakeup fd, no polling grid), retries up to
``max_retries``, obeys ``on_failure``, mirrors ``local_sync`` outputs, merges its keys
into ``summary.json`` without touching the script's, and at the end moves the state
SWEEP_RUNNING -> SWEEP_COMPLETED itself.
"""

import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid

from . import gpulease, metrics, procs, state, torchrun_report
from .fsutil import expand, locked, makedirs, read_json, utcnow, write_atomic, write_json_atomic
from .protocol import AgentError

RUNNER_ID = "sweep-runner"
RUN_COMMAND = "sweep-run"
#: Keys the runner adds to ``summary.json`` (only those the script did not write).
SUMMARY_KEYS = ("ok", "exit_code", "duration_secs", "state", "attempt", "run_id", "finished_at")
#: Files of the durable run dir the local_sync mirror never overwrites.
OWN_FILES = (procs.STATUS_FILE, procs.LOG_FILE, procs.COMMAND_FILE, procs.LOCK_FILE, procs.FIFO_FILE,
             procs.WRAPPER_LOG)
MAX_BLOCK_SECS = 300.0
TAIL_LINES = 15
#: Seconds one status may spend parsing new log bytes; the rest waits for the next one.
METRICS_BUDGET_SECS = 30.0
NOT_OK = (procs.FAILED, procs.TIMED_OUT, procs.LOST, procs.CANCELLED)


# ---------------------------------------------------------------- paths


def control_dir(request_or_outputs):
    outputs = request_or_outputs if isinstance(request_or_outputs, str) else request_or_outputs["outputs_dir"]
    return os.path.join(expand(outputs), "_control", "sweep")


def runner_dir(ctl):
    return os.path.join(ctl, "runner")


def _run_dir(outputs, run_id):
    return os.path.join(outputs, procs.validate_id(run_id, "run id"))


def _runner_state(ctl):
    """The runner's status after the repair pass (None: never started)."""
    d = runner_dir(ctl)
    if not os.path.isfile(procs.status_path(d)):
        return None
    return procs.refresh_status(d)


def _runner_public(doc):
    if doc is None:
        return {"alive": False, "state": None}
    return {"alive": doc.get("state") in procs.ACTIVE, "state": doc.get("state"), "pid": doc.get("pid"),
            "wrapper_pid": doc.get("wrapper_pid"), "started_at": doc.get("started_at"),
            "finished_at": doc.get("finished_at"), "exit_code": doc.get("exit_code"),
            "error": doc.get("error"), "sweep_id": doc.get("sweep_id"),
            "tmux_session": doc.get("tmux_session"), "tmux_socket": doc.get("tmux_socket")}


def _read_status_safe(d):
    try:
        return procs.refresh_status(d)
    except AgentError as exc:
        return {"state": "unknown", "error": exc.message}


# ---------------------------------------------------------------- GPUs


def _split_gpus(text):
    ids = [t.strip() for t in (text or "").split(",") if t.strip()]
    if ids in (["-1"], ["none"], ["NoDevFiles"]):
        return []
    return ids


def _torch_gpus(python):
    """GPU ids as torch in the checkout's venv counts them (pods without nvidia-smi)."""
    if not python or not os.path.isfile(python):
        return None
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        res = subprocess.run([python, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=120)
        count = int(res.stdout.decode("utf-8", "replace").strip().splitlines()[-1]) if res.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return [str(i) for i in range(count)]


def detect_gpus(remote_env=None, venv_python=None):
    """(gpu ids, where they came from): CUDA_VISIBLE_DEVICES of remote.env, else of the
    pod's environment, else nvidia-smi, else torch in the checkout's venv, else none."""
    remote_env = remote_env or {}
    if "CUDA_VISIBLE_DEVICES" in remote_env:
        return _split_gpus(str(remote_env["CUDA_VISIBLE_DEVICES"])), "remote.env CUDA_VISIBLE_DEVICES"
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return _split_gpus(os.environ["CUDA_VISIBLE_DEVICES"]), "CUDA_VISIBLE_DEVICES"
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            res = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
            if res.returncode == 0:
                ids = [line.strip() for line in res.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
                return ids, "nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    ids = _torch_gpus(venv_python)
    if ids:
        return ids, "torch"
    return [], "none"


# ---------------------------------------------------------------- probe


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
    gpus, source = detect_gpus(request.get("remote_env"), os.path.join(workdir, ".venv", "bin", "python"))
    runs = {}
    for run_id in request.get("run_ids") or []:
        d = _run_dir(outputs, run_id)
        doc = _read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
        if doc is not None:
            runs[run_id] = {"state": doc.get("state"), "attempt": doc.get("attempt")}
    ctl = control_dir(outputs)
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
        "runner": _runner_public(_runner_state(ctl)),
        "runs": runs,
    }


# ---------------------------------------------------------------- start


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
        runner = _runner_state(ctl)
        if runner is not None and runner.get("state") in procs.ACTIVE:
            st = state.read_state(request)
            raise AgentError("refused", "a sweep runner is already running (pid %s)" % runner.get("pid"),
                             command="sweep-start", current=st["state"] + " (runner alive)",
                             allowed=["CHECKED_OUT", "SWEEP_COMPLETED", "SWEEP_RUNNING whose runner is dead"])
        # Runs a dead runner left "running" become lost now (their leftovers killed).
        for r in runs:
            if os.path.isfile(procs.status_path(r["out_dir"])):
                _read_status_safe(r["out_dir"])
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
    return {"sweep_id": sweep_id, "runner": _runner_public(doc), "state": "SWEEP_RUNNING", "from": before,
            "manifests": {"latest": os.path.join(manifests, "sweep-latest.csv"),
                          "csv": os.path.join(manifests, "sweep-%s.csv" % sweep_id),
                          "config": os.path.join(manifests, "sweep-%s.json" % sweep_id)}}


# ---------------------------------------------------------------- status


def _plan(ctl):
    return read_json(os.path.join(ctl, "plan.json"), default=None, what="sweep plan")


def _metrics_options(request):
    """``request["metrics"]`` ({patterns, primary, mode}) checked; AgentError on a bad pattern."""
    opts = dict(request.get("metrics") or {})
    try:
        opts["patterns"] = metrics.compile_patterns(opts.get("patterns"))
    except ValueError as exc:
        raise AgentError("input", str(exc))
    opts["mode"] = "max" if opts.get("mode") == "max" else "min"
    return opts


def _run_row(r, sweep_id, runner_alive, tail_lines, ctl, opts, deadline):
    d = r["out_dir"]
    doc = _read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
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
        row.update(metrics.run_summary(d, os.path.join(ctl, "metrics", r["run_id"] + ".json"), opts["patterns"],
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
    plan = _plan(ctl)
    runner = _runner_state(ctl)
    tail_lines = int(request.get("tail", TAIL_LINES))
    opts = _metrics_options(request)
    deadline = time.monotonic() + METRICS_BUDGET_SECS
    rows = []
    if plan:
        alive = bool(runner and runner.get("state") in procs.ACTIVE)
        for r in plan.get("runs") or []:
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
        "runner": _runner_public(runner),
        "fsm_state": fsm_state,
        "created_at": plan.get("created_at") if plan else None,
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


# ---------------------------------------------------------------- stop


def _terminate_all(dirs, grace):
    results = {}

    def one(d):
        try:
            results[d] = procs.terminate(d, grace_secs=grace)[1]
        except AgentError:
            results[d] = False

    threads = [threading.Thread(target=one, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def stop(request):
    """No more launches; every active run cancelled; the runner ended. The client moves
    the state (SWEEP_RUNNING -> CHECKED_OUT)."""
    outputs = expand(request["outputs_dir"])
    ctl = control_dir(outputs)
    grace = float(request.get("grace_secs") if request.get("grace_secs") is not None else procs.GRACE_SECS)
    plan = _plan(ctl) or {"runs": []}
    with locked(os.path.join(ctl, ".lock")):
        with locked(os.path.join(ctl, ".launch.lock")):
            write_atomic(os.path.join(ctl, "stop"), utcnow() + "\n")
        active = []
        for r in plan.get("runs") or []:
            if os.path.isfile(procs.status_path(r["out_dir"])):
                doc = _read_status_safe(r["out_dir"])
                if doc.get("state") in procs.ACTIVE:
                    active.append(r["out_dir"])
        cancelled = [d for d, was in _terminate_all(active, grace).items() if was]
        runner_was_active = False
        d = runner_dir(ctl)
        if os.path.isfile(procs.status_path(d)):
            runner_was_active = procs.terminate(d, grace_secs=grace + 5.0)[1]
        # Anything launched in between (there should be none) goes too.
        late = [r["out_dir"] for r in plan.get("runs") or []
                if os.path.isfile(procs.status_path(r["out_dir"]))
                and _read_status_safe(r["out_dir"]).get("state") in procs.ACTIVE]
        cancelled += [d2 for d2, was in _terminate_all(late, grace).items() if was]
    out = status(request)
    out["cancelled"] = sorted(os.path.basename(x) for x in cancelled)
    out["runner_was_active"] = runner_was_active
    return out


# ---------------------------------------------------------------- the runner


def _log(text):
    print("%s %s" % (utcnow(), text), flush=True)


def command_text(r, cvd, attempt):
    """``command.sh`` of a run: the launch argv, every element quoted, exec'd by bash."""
    lines = ["# podflow sweep run %s (attempt %d), CSV line %s" % (r["run_id"], attempt, r.get("line")),
             "# cwd: %s" % r["workdir"],
             "# env: CUDA_VISIBLE_DEVICES=%s %s" % (shlex.quote(cvd), " ".join(
                 "%s=%s" % (k, shlex.quote(v)) for k, v in sorted((r.get("env") or {}).items()))),
             "exec " + " ".join(shlex.quote(a) for a in r["argv"])]
    return "\n".join(lines) + "\n"


def _note_worker_failures(d, doc):
    """Keep torchrun's report of its failed workers (rank, exit code, signal) in the
    run's ``status.json``: its own exit status (1) does not say a worker was killed."""
    failures = torchrun_report.worker_failures(procs.tail(d, None, max_bytes=65536))
    if not failures:
        return doc
    try:
        return procs.update_status(d, worker_failures=failures)
    except (AgentError, OSError) as exc:
        _log("status of %s: worker failures not written: %s" % (d, exc))
        return doc


def _strip_runner_keys(d):
    path = os.path.join(d, "summary.json")
    try:
        doc = read_json(path, default=None, what="summary")
    except AgentError:
        return
    if not doc or "podflow_keys" not in doc:
        return
    for k in doc.pop("podflow_keys") or []:
        doc.pop(k, None)
    write_json_atomic(path, doc)


def merge_summary(d, fields):
    """Add the runner's ``fields`` to ``summary.json``; keys already there (the script's)
    are kept as they are. A summary that is not a JSON object is moved aside."""
    path = os.path.join(d, "summary.json")
    try:
        doc = read_json(path, default=None, what="summary") or {}
    except AgentError:
        try:
            os.rename(path, path + ".unparsable")
        except OSError:
            pass
        doc = {"summary_moved_to": "summary.json.unparsable"}
    mine = []
    for k, v in fields.items():
        if k not in doc:
            doc[k] = v
            mine.append(k)
    doc["podflow_keys"] = mine
    write_json_atomic(path, doc)
    return doc


class _Sync(object):
    """local_sync: mirror ``src`` into ``dest`` every ``interval`` s and once at the end."""

    def __init__(self, src, dest, interval):
        self.src, self.dest, self.interval = src, dest, max(0.05, float(interval))
        self.event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sync")
        self.thread.daemon = True
        self.errors = 0

    def once(self):
        if not os.path.isdir(self.src):
            return True
        exe = shutil.which("rsync")
        if not exe:
            _log("local_sync: rsync not found on the pod")
            return False
        argv = [exe, "-a", "--modify-window=-1"]
        for name in OWN_FILES:
            argv.append("--exclude=/" + name)
        argv += [self.src.rstrip("/") + "/", self.dest.rstrip("/") + "/"]
        try:
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=3600)
        except (OSError, subprocess.SubprocessError) as exc:
            _log("local_sync %s: %s" % (self.src, exc))
            return False
        if res.returncode not in (0, 24):
            self.errors += 1
            _log("local_sync %s -> %s: rsync exit %d: %s" % (self.src, self.dest, res.returncode,
                                                            res.stdout.decode("utf-8", "replace")[-500:]))
            return False
        return True

    def _loop(self):
        while not self.event.wait(self.interval):
            self.once()

    def start(self):
        self.thread.start()

    def finish(self):
        self.event.set()
        self.thread.join()
        return self.once()


class Runner(object):
    def __init__(self, ctl, sweep_id):
        self.ctl = ctl
        self.plan = _plan(ctl)
        if not self.plan or self.plan.get("sweep_id") != sweep_id:
            raise AgentError("input", "sweep plan %s is not sweep %s" % (ctl, sweep_id))
        self.sweep_id = sweep_id
        s = self.plan.get("settings") or {}
        self.settings = s
        self.gpus = [str(g) for g in (s.get("gpus") or [])]
        self.free = list(self.gpus)  # not used by this sweep's own runs
        self.leases = gpulease.GpuLeases({"sweep_id": sweep_id, "outputs_dir": self.plan.get("outputs_dir"),
                                          "user": os.environ.get("USER") or str(os.getuid())},
                                         directory=s.get("gpu_lease_dir"))
        self.on_failure = s.get("on_failure") or "continue"
        self.max_retries = int(s.get("max_retries") or 0)
        self.local_sync = s.get("out_mode") == "local_sync"
        self.sync_interval = float(s.get("sync_interval_secs") or 60)
        self.venv_bin = s.get("venv_bin")
        self.grace = float(s.get("grace_secs") or procs.GRACE_SECS)
        self.queue = [r for r in self.plan.get("runs") or [] if r.get("launch", True)]
        self.tries = {}
        self.active = {}  # wrapper pid -> {run, dir, gpus, sync, attempt, cvd}
        self.launching = {}  # future of procs.launch -> the same
        self.pool = None
        self.stopping = None
        self.halted = False
        self.blocked = False  # a run waits for GPUs another sweep holds
        self.results = {}

    # -- signals: a wakeup fd, so the loop blocks on child exits instead of polling
    def _install_signals(self):
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.wake_r, self.wake_w = r, w
        signal.set_wakeup_fd(w)

        def on_stop(signum, frame):
            self.stopping = self.stopping or signum

        signal.signal(signal.SIGCHLD, lambda s, f: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_stop)

    def _drain(self, timeout):
        try:
            ready, _, _ = select.select([self.wake_r], [], [], timeout)
        except (OSError, ValueError):
            ready = []
        if ready:
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _stop_flag(self):
        return os.path.exists(os.path.join(self.ctl, "stop"))

    def _env(self, r, cvd):
        extra = dict(r.get("env") or {})
        extra["CUDA_VISIBLE_DEVICES"] = cvd
        path = os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
        if self.venv_bin:
            path = self.venv_bin + os.pathsep + path
        extra["PATH"] = path
        env = procs.job_env(extra)
        for key in (procs.MARK_VAR, "WF_TASK_ID", "WF_TASK_DIR"):
            env.pop(key, None)
        return env

    def _resolve(self, r, env):
        """The argv to exec: ``torchrun`` as planned, or, where the venv has torch but no
        ``torchrun`` script (a venv seeing a parent's packages through a .pth), the same
        launcher as ``python -m torch.distributed.run``."""
        argv = list(r["argv"])
        if argv and argv[0] == "torchrun" and not shutil.which("torchrun", path=env.get("PATH")):
            py = shutil.which("python", path=env.get("PATH")) or shutil.which("python3", path=env.get("PATH"))
            if py:
                return ["python", "-m", "torch.distributed.run"] + argv[1:], True
        return argv, False

    def _reserve(self, r):
        """The GPUs for ``r``, leased pod-wide ([] on CPU), or None when it cannot start
        now (CPU: another run is active; GPUs: too few free here or held by others)."""
        need = int(r.get("gpus") or 0)
        if not self.gpus or need == 0:
            return [] if not self.active and not self.launching else None  # CPU: one at a time
        if need > len(self.free):
            return None
        take = self.leases.take(self.free, need)
        if take is None:
            self.blocked = True  # held by another sweep on this pod: ask again soon
            return None
        self.free = [g for g in self.free if g not in take]
        return take

    def _give_back(self, gpus):
        self.leases.release(gpus)
        self.free = sorted(self.free + list(gpus), key=self.gpus.index)

    def _launch(self, r, take):
        run_id = r["run_id"]
        d = r["out_dir"]
        makedirs(d)
        cvd = ",".join(take)
        old = _read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
        attempt = int((old or {}).get("attempt") or 0) + 1
        self.tries[run_id] = self.tries.get(run_id, 0) + 1
        _strip_runner_keys(d)
        sync = None
        if self.local_sync and r.get("script_out_dir") and r["script_out_dir"] != d:
            makedirs(r["script_out_dir"])
            sync = _Sync(r["script_out_dir"], d, self.sync_interval)
        env = self._env(r, cvd)
        argv, fallback = self._resolve(r, env)
        try:
            procs.prepare(d, run_id, command_text(dict(r, argv=argv), cvd, attempt), timeout_secs=r.get("timeout_secs"),
                          workdir=r["workdir"], attempt=attempt,
                          extra={"sweep_id": self.sweep_id, "line": r.get("line"), "cuda_visible_devices": cvd,
                                 "argv": argv, "script_out_dir": r.get("script_out_dir")})
            procs._log_note(d, "run %s attempt %d started by sweep %s (CUDA_VISIBLE_DEVICES=%r)%s"
                            % (run_id, attempt, self.sweep_id, cvd,
                               "; no torchrun on PATH: python -m torch.distributed.run" if fallback else ""))
        except (AgentError, OSError) as exc:
            self._give_back(take)
            _log("run %s: could not be prepared: %s" % (run_id, exc))
            self._finished(r, d, take, None)
            return
        # The launch itself (wrapper start-up) runs on a persistent pool thread, so runs
        # packed on several GPUs start together; a pool thread lives as long as the
        # runner, which is what die_with_parent (PR_SET_PDEATHSIG, per thread) needs.
        fut = self.pool.submit(procs.launch, d, env=env, tmux=None, grace_secs=self.grace, die_with_parent=True)
        self.launching[fut] = {"run": r, "dir": d, "gpus": take, "sync": sync, "attempt": attempt, "cvd": cvd}
        fut.add_done_callback(self._wake)

    def _wake(self, _fut=None):
        try:
            os.write(self.wake_w, b"L")
        except OSError:
            pass

    def _collect(self):
        for fut in [f for f in self.launching if f.done()]:
            a = self.launching.pop(fut)
            r = a["run"]
            try:
                doc = fut.result()
            except Exception as exc:  # noqa: BLE001 - AgentError('start') or an OSError
                self._give_back(a["gpus"])
                _log("run %s: could not start: %s" % (r["run_id"], getattr(exc, "message", exc)))
                self._finished(r, a["dir"], a["gpus"], None)
                continue
            pid = int(doc["wrapper_pid"])
            if a["sync"]:
                a["sync"].start()
            self.active[pid] = a
            _log("run %s started (attempt %d, pid %s, CUDA_VISIBLE_DEVICES=%r)"
                 % (r["run_id"], a["attempt"], doc.get("pid"), a["cvd"]))

    def _reap(self):
        """Runs whose wrapper exited: GPUs freed, retry/on_failure decided now; the
        bookkeeping (final sync, summary) is returned to run after the next launches."""
        later = []
        for pid in list(self.active):
            try:
                got, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got = pid
            if got == 0:
                continue
            a = self.active.pop(pid)
            self._give_back(a["gpus"])
            doc = procs.refresh_status(a["dir"]) or {}
            if self._decide(a["run"], doc):
                self._wrapup(a["run"], a["dir"], a["sync"], doc)  # before its retry starts
            else:
                later.append((a["run"], a["dir"], a["sync"], doc))
        return later

    def _finished(self, r, d, gpus, sync):
        doc = procs.refresh_status(d) or {}
        self._decide(r, doc)
        self._wrapup(r, d, sync, doc)

    def _wrapup(self, r, d, sync, doc):
        if sync is not None:
            sync.finish()
        st = doc.get("state")
        if st == procs.FAILED:
            doc = _note_worker_failures(d, doc)
        try:
            merge_summary(d, {"ok": st == procs.SUCCESS, "exit_code": doc.get("exit_code"),
                              "duration_secs": procs.duration_secs(doc), "state": st, "attempt": doc.get("attempt"),
                              "run_id": r["run_id"], "finished_at": doc.get("finished_at")})
        except OSError as exc:  # e.g. a full disk: status.json holds the truth; the sweep goes on
            _log("run %s: summary.json not written: %s" % (r["run_id"], exc))
        _log("run %s: %s (exit %s, %ss)" % (r["run_id"], st, doc.get("exit_code"), procs.duration_secs(doc)))

    def _decide(self, r, doc):
        """Retry (True: it is queued again) or, with on_failure: stop, halt the sweep."""
        st = doc.get("state")
        self.results[r["run_id"]] = st
        if st in (procs.FAILED, procs.TIMED_OUT) and not self.stopping and not self._stop_flag():
            if self.tries.get(r["run_id"], 0) <= self.max_retries:
                _log("run %s: %s; retry %d of %d" % (r["run_id"], st, self.tries[r["run_id"]], self.max_retries))
                self.queue.insert(0, r)
                return True
            if self.on_failure == "stop":
                _log("run %s: %s; on_failure: stop: no more runs are started" % (r["run_id"], st))
                self.halted = True
        return False

    def _launch_ready(self):
        self.blocked = False
        if self.stopping or self.halted:
            return
        with locked(os.path.join(self.ctl, ".launch.lock")):
            if self._stop_flag():
                self.stopping = self.stopping or "stop"
                return
            i = 0
            while i < len(self.queue) and not self.halted:
                if self.gpus and not self.free:
                    break
                r = self.queue[i]
                d = r["out_dir"]
                prev = _read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
                if prev and prev.get("state") == procs.SUCCESS and r["run_id"] not in self.tries:
                    self.queue.pop(i)
                    continue  # already ok (an earlier sweep)
                take = self._reserve(r)
                if take is None:
                    if not self.gpus:
                        break
                    i += 1
                    continue
                self.queue.pop(i)
                self._launch(r, take)

    def run(self):
        self._install_signals()
        _log("sweep %s: %d run(s) to start, GPUs: %s, on_failure=%s, max_retries=%d, out_mode=%s" % (
            self.sweep_id, len(self.queue), ",".join(self.gpus) or "none (CPU, one run at a time)",
            self.on_failure, self.max_retries, "local_sync" if self.local_sync else "durable"))
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=max(1, min(len(self.gpus), 16)))
        while True:
            self._collect()
            later = self._reap()
            self._launch_ready()
            for item in later:
                self._wrapup(*item)
            if not self.active and not self.launching and (self.stopping or self.halted or not self.queue):
                break
            self.leases.waiting(self.blocked)
            self._drain(0.1 if self.blocked else 1.0)
            self._collect()
            if self.stopping and self.active:
                _log("stopping (%s): cancelling %d active run(s)" % (self.stopping, len(self.active)))
                _terminate_all([a["dir"] for a in self.active.values()], self.grace)
        signal.set_wakeup_fd(-1)
        self.leases.waiting(False)
        self.pool.shutdown(wait=True)
        if self.stopping or self._stop_flag():
            _log("sweep %s stopped" % self.sweep_id)
            return 143 if self.stopping == signal.SIGTERM else 0
        req = {"outputs_dir": self.plan["outputs_dir"], "state_file": self.plan.get("state_file"),
               "to": "SWEEP_COMPLETED", "trigger": "sweep-finished", "expect": ["SWEEP_RUNNING"], "enforce": True,
               "by": "podflow sweep runner %s" % self.sweep_id, "set": {"sweep_finished_at": utcnow()}}
        for attempt in range(60):  # a full disk may clear; the state must not stay RUNNING
            try:
                state.transition(req)
                _log("sweep %s completed: state SWEEP_COMPLETED" % self.sweep_id)
            except AgentError as exc:
                _log("sweep %s completed; the state was not moved: %s" % (self.sweep_id, exc.message))
            except OSError as exc:
                _log("sweep %s completed; writing the state failed (%s), retrying" % (self.sweep_id, exc))
                time.sleep(10)
                continue
            break
        return 0


def runner_main(argv):
    """``podagent sweep-run CONTROL_DIR SWEEP_ID``: run the planned sweep to its end."""
    if len(argv) != 2:
        print("usage: podagent sweep-run CONTROL_DIR SWEEP_ID")
        return 2
    try:
        runner = Runner(os.path.abspath(argv[0]), argv[1])
    except AgentError as exc:
        _log("sweep-run: %s" % exc.message)
        return 2
    return runner.run()


OPS = {
    "sweep.probe": probe,
    "sweep.start": start,
    "sweep.status": status,
    "sweep.wait": wait,
    "sweep.stop": stop,
}

COMMANDS = {RUN_COMMAND: runner_main}
