"""The sweep runner (``podagent sweep-run CONTROL_DIR SWEEP_ID``), a tracked job in tmux.

It launches each run with ``procs.launch`` (detached, ``die_with_parent``: if the runner
is killed its runs' wrappers die with it and the runs read ``lost``), packs runs on
disjoint GPU sets (first fit, in CSV order; nothing starts past a node of a multi-node
run that waits for GPUs, so every pod reaches the run's rendezvous in CSV order and
nodes never wait on each other in a cycle), waits on its children's exits (SIGCHLD
through a wakeup fd, no polling grid), retries up to ``max_retries``, obeys
``on_failure``, mirrors ``local_sync`` outputs, merges its keys into ``summary.json``
without touching the script's, and at the end moves the state SWEEP_RUNNING ->
SWEEP_COMPLETED itself.
"""

import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time

from . import gpulease, node_watch, procs, resume, state, torchrun_report
from .fsutil import locked, makedirs, read_json, utcnow, write_json_atomic
from .protocol import AgentError
from .sweepdirs import read_plan, read_status_safe, read_withdrawn, terminate_all


#: Keys the runner adds to ``summary.json`` (only those the script did not write).
SUMMARY_KEYS = ("ok", "exit_code", "duration_secs", "state", "attempt", "run_id", "finished_at")
#: Files of the durable run dir the local_sync mirror never overwrites.
OWN_FILES = resume.RUN_ENGINE_FILES


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
        self.plan = read_plan(ctl)
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
        old = read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
        attempt = resume.attempt_of(old, r)
        self.tries[run_id] = self.tries.get(run_id, 0) + 1
        _strip_runner_keys(d)
        sync = None
        if self.local_sync and r.get("script_out_dir") and r["script_out_dir"] != d:
            makedirs(r["script_out_dir"])
            sync = _Sync(r["script_out_dir"], d, self.sync_interval)
        try:
            argv, extra_env, resuming = resume.launch_with_resume(r, attempt)
        except OSError as exc:
            argv, extra_env, resuming = list(r["argv"]), {"WF_ATTEMPT": str(attempt)}, False
            _log("run %s: its earlier files could not be read (%s): it starts afresh" % (run_id, exc))
        this = dict(r, argv=argv, env=dict(r.get("env") or {}, **extra_env))  # r stays the plan (retries)
        env = self._env(this, cvd)
        argv, fallback = self._resolve(this, env)
        try:
            procs.prepare(d, run_id, command_text(dict(this, argv=argv), cvd, attempt), timeout_secs=r.get("timeout_secs"),
                          workdir=r["workdir"], attempt=attempt,
                          extra={"sweep_id": self.sweep_id, "line": r.get("line"), "cuda_visible_devices": cvd,
                                 "argv": argv, "script_out_dir": r.get("script_out_dir"), "resumed": resuming})
            procs.log_note(d, "run %s attempt %d started by sweep %s (CUDA_VISIBLE_DEVICES=%r)%s%s"
                            % (run_id, attempt, self.sweep_id, cvd,
                               "; resuming from its earlier files (WF_RESUME=1)" if resuming else "",
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
        """A run that could not be prepared or started ends here; a node of a multi-node
        run tells its node 0, which ends the others (``node_watch``)."""
        doc = procs.refresh_status(d) or {}
        node_watch.tell(r.get("env") or {}, doc.get("state") or procs.FAILED)
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
            # a node of a multi-node run is not retried alone: its other nodes have ended
            # (sweep-start --retry-failed starts them all again, together)
            if self.tries.get(r["run_id"], 0) <= self.max_retries and int(r.get("nodes") or 1) == 1:
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
            gone = read_withdrawn(self.ctl, self.sweep_id)  # a pool moved them to another pod
            if gone:
                self.queue = [r for r in self.queue if r["run_id"] not in gone]
            i = 0
            while i < len(self.queue) and not self.halted:
                if self.gpus and not self.free:
                    break
                r = self.queue[i]
                d = r["out_dir"]
                prev = read_status_safe(d) if os.path.isfile(procs.status_path(d)) else None
                many = int(r.get("nodes") or 1) > 1
                if prev and prev.get("state") == procs.SUCCESS and r["run_id"] not in self.tries and not many:
                    self.queue.pop(i)
                    continue  # already ok (an earlier sweep); a node of a multi-node run: the client decided
                if (prev and prev.get("sweep_id") == self.sweep_id and r["run_id"] not in self.tries
                        and procs.is_terminal(prev.get("state"))):
                    self.queue.pop(i)
                    continue  # ended in this sweep before its launch (sweep.end_run)
                take = self._reserve(r)
                if take is None:
                    if not self.gpus or many:
                        break  # a multi-node run waits for its GPUs before anything behind it starts
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
                terminate_all([a["dir"] for a in self.active.values()], self.grace)
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

