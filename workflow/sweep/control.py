"""The sweep on the pod, the engine's side: start, status, wait, stop (SPEC §4-§6).

Every function costs a fixed number of podagent calls whatever the number of runs:

* ``start_sweep``: the CSV is validated here (exit 2, line numbers) before the pod is
  touched; one ``sweep.probe`` call (GPUs, missing configs, runner liveness, the
  state, each run's last state; a pool's start reuses its placement's, ``Probed``);
  the state machine check (``sweep-start`` may start from CHECKED_OUT,
  SWEEP_COMPLETED, or SWEEP_RUNNING whose runner is dead); the plan (``plan_runs``);
  one ``sweep.start`` call that re-checks under a lock, moves the state with
  compare-and-set, uploads the manifests and starts the runner in tmux.
* ``sweep_status``: one call, 1000 runs included.
* ``wait_sweep``: one call per ``MAX_BLOCK_SECS``; returns as soon as the runner ends.
* ``stop_sweep``: one call, then the state back to CHECKED_OUT.

Library API::

    started = start_sweep(cfg, agent, fsm, retry_failed=True)
    st = wait_sweep(agent, timeout_secs=3600)      # WaitTimeout (exit 5)
    print(st.counts, st.ok)
"""

from __future__ import annotations

import getpass
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Tuple

from workflow.errors import InputError, TransitionRefused, WaitTimeout
from workflow.sweep.csvfile import read_sweep_csv
from workflow.sweep.multinode import as_node, check_fits
from workflow.sweep.plan import RunPlan, plan_runs, select_rows
from workflow.sweep.resume import Resume, decide, local_copy, push_local

MAX_BLOCK_SECS = 300.0
_SLACK_SECS = 60.0
TERMINAL = ("success", "failed", "timed_out", "cancelled", "lost")
NOT_OK = ("failed", "timed_out", "cancelled", "lost")


@dataclass(frozen=True)
class SweepSettings:
    """What the runner needs from ``sweep.*`` beyond each run's plan."""

    session: str
    """tmux session of the runner (``sweep.tmux_session``, default ``<project>-sweep``)."""
    on_failure: str = "continue"
    max_retries: int = 0
    out_mode: str = "durable"
    sync_interval_secs: float = 60.0
    remote_env: Mapping[str, str] = field(default_factory=dict)
    """``remote.env``: every run's environment has it."""

    @classmethod
    def from_config(cls, cfg) -> "SweepSettings":
        sweep = cfg.get("sweep")
        env = {str(k): "" if v is None else str(v) for k, v in dict(cfg.get("remote.env", None) or {}).items()}
        return cls(session=sweep.get("tmux_session") or f"{cfg.get('project', 'podflow')}-sweep",
                   on_failure=sweep.get("on_failure") or "continue",
                   max_retries=int(sweep.get("max_retries") or 0),
                   out_mode=sweep.get("out_mode") or "durable",
                   sync_interval_secs=float(sweep.get("sync_interval_secs") or 60),
                   remote_env=env)


@dataclass(frozen=True)
class PlannedRun:
    """One selected row: its launch, and whether this sweep starts it."""

    plan: RunPlan
    launch: bool
    why: str
    """``run``, ``retry`` (it ran and did not succeed), ``already ok``, ``never ran`` (skipped by --retry-failed)."""
    previous_state: Optional[str] = None
    resume: Optional[Resume] = None
    """For a run it launches: its attempt and where its earlier files come from (SPEC §8)."""

    @property
    def argv(self) -> Tuple[str, ...]:
        """The argv it is launched with: ``sweep.resume_args`` follow when it resumes."""
        return self.plan.argv + (self.plan.resume_argv if self.resume and self.resume.resumes else ())

    @property
    def resume_env(self) -> Dict[str, str]:
        """``WF_ATTEMPT`` and, when it resumes, ``WF_RESUME=1``."""
        if self.resume is None:
            return {}
        return {"WF_ATTEMPT": str(self.resume.attempt), **({"WF_RESUME": "1"} if self.resume.resumes else {})}


@dataclass(frozen=True)
class Probed:
    """What a dry run learnt of a pod, for the start that follows it to reuse (a pool's
    placement probes every pod; its start then costs one call per pod, not three)."""

    probe: Mapping[str, Any]
    """The ``sweep.probe`` answer."""
    state: Optional[str]
    """The state the state machine allowed the start from (None: it was not asked)."""


@dataclass(frozen=True)
class SweepStart:
    """What ``start_sweep`` did (or, with ``dry_run``, would do)."""

    runs: Tuple[PlannedRun, ...]
    gpus: Tuple[str, ...]
    gpu_source: str
    env: Mapping[str, str]
    """Environment every run gets on top of the pod's (``remote.env`` + the venv on PATH)."""
    venv_bin: str
    dry_run: bool
    sweep_id: Optional[str] = None
    manifests: Mapping[str, str] = field(default_factory=dict)
    session: Optional[str] = None
    from_state: Optional[str] = None
    probed: Optional[Probed] = field(default=None, repr=False, compare=False)
    """A dry run's probe and state check (``start_sweep(probed=...)`` reuses them)."""

    @property
    def to_run(self) -> List[PlannedRun]:
        return [r for r in self.runs if r.launch]

    def to_dict(self) -> Dict[str, Any]:
        return {"sweep_id": self.sweep_id, "dry_run": self.dry_run, "gpus": list(self.gpus),
                "gpu_source": self.gpu_source, "session": self.session, "from_state": self.from_state,
                "manifests": dict(self.manifests), "venv_bin": self.venv_bin,
                "runs": [dict(r.plan.to_dict(), launch=r.launch, why=r.why, previous_state=r.previous_state,
                              argv=list(r.argv), env=dict(self.env, **r.plan.env, **r.resume_env),
                              attempt=r.resume.attempt if r.resume else None,
                              resume_from=r.resume.source if r.resume else None) for r in self.runs]}


@dataclass(frozen=True)
class RunState:
    """One run of the sweep as the pod reports it (after the repair pass)."""

    id: str
    state: str
    """``pending`` (queued or never run), ``running``, ``success``, ``failed``, ``timed_out``, ``cancelled``, ``lost``."""
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    """The signal that killed the launcher (``SIGABRT``), if one did."""
    worker_failures: Optional[Tuple[Mapping[str, Any], ...]] = None
    """torchrun's report of its failed workers: ``rank``, ``exitcode``, ``signal_name``, ``root_cause``."""
    duration_secs: Optional[float] = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """The last value of each metric (SPEC §11: metrics.jsonl, then the log)."""
    best: Optional[Mapping[str, Any]] = None
    """``{"name", "value", "step"}``: the best value of ``sweep.metrics.primary``."""
    progress: Optional[Mapping[str, Any]] = None
    metrics_complete: bool = True
    """False while the pod has not yet read the whole log (a status keeps to a time budget)."""
    """``{"step", "total", "fraction", "eta_secs"}`` where the run's progress is known."""
    log_tail: Optional[str] = None
    """The last log lines, for runs that did not succeed."""
    attempt: Optional[int] = None
    gpus: Optional[str] = None
    """The ``CUDA_VISIBLE_DEVICES`` it was given."""
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    error: Optional[str] = None
    line: Optional[int] = None
    dir: Optional[str] = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "RunState":
        fields = {k: doc.get(k) for k in cls.__dataclass_fields__ if k in doc}
        if fields.get("worker_failures"):
            fields["worker_failures"] = tuple(dict(w) for w in fields["worker_failures"])
        return cls(**fields)


@dataclass(frozen=True)
class SweepStatus:
    """The whole sweep in one call."""

    state: str
    """``running``, ``completed``, ``cancelled``, ``runner_dead``, ``not_started``, ``none``."""
    counts: Mapping[str, int]
    percent: float
    runs: Tuple[RunState, ...]
    sweep_id: Optional[str] = None
    fsm_state: Optional[str] = None
    runner: Mapping[str, Any] = field(default_factory=dict)
    finished: bool = True
    withdrawn: Tuple[str, ...] = ()
    """Runs of this pod's sweep a pool moved to another pod (never launched here)."""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.state == "success" for r in self.runs)

    @property
    def active(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "SweepStatus":
        return cls(state=doc.get("state") or "none", counts=dict(doc.get("counts") or {}),
                   percent=float(doc.get("percent") or 0.0),
                   runs=tuple(RunState.from_doc(r) for r in doc.get("runs") or []),
                   sweep_id=doc.get("sweep_id"), fsm_state=doc.get("fsm_state"), runner=doc.get("runner") or {},
                   finished=bool(doc.get("finished", True)), withdrawn=tuple(doc.get("withdrawn") or ()))

    def to_json(self) -> Dict[str, Any]:
        """SPEC §6 ``sweep-status --json`` (plus ``sweep_id``, ``fsm_state``, ``runner``)."""
        return {"state": self.state, "counts": dict(self.counts), "percent": self.percent,
                "sweep_id": self.sweep_id, "fsm_state": self.fsm_state, "runner": dict(self.runner),
                "runs": [{"id": r.id, "state": r.state, "exit_code": r.exit_code, "signal": r.signal,
                          "worker_failures": [dict(w) for w in r.worker_failures or ()],
                          "duration_secs": r.duration_secs,
                          "metrics": dict(r.metrics or {}), "best": r.best, "progress": r.progress,
                          "metrics_complete": r.metrics_complete,
                          "log_tail": r.log_tail, "attempt": r.attempt,
                          "gpus": r.gpus, "dir": r.dir} for r in self.runs]}


def _plain(value: Any) -> Any:
    from workflow.config.loader import looks_secret

    if isinstance(value, Mapping):
        return {str(k): ("***" if looks_secret(str(k)) and v else _plain(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def start_sweep(cfg, agent, fsm, *, csv: Optional[str] = None, match: Optional[str] = None,
                start_at: Optional[str] = None, limit: Optional[int] = None, dry_run: bool = False,
                retry_failed: bool = False, warn: Optional[Callable[[str], None]] = None,
                run_ids: Optional[Collection[str]] = None, check_state: bool = False,
                launch_ids: Optional[Collection[str]] = None,
                attempts: Optional[Mapping[str, int]] = None,
                nodes: Mapping[str, Any] = {}, placing: bool = False,
                probed: Optional[Probed] = None) -> SweepStart:
    """Validate, probe, check the state, plan and start the sweep (see the module doc).

    ``run_ids``: only these of the selected rows (the ones a pool placed on this pod).
    ``check_state``: a dry run asks the state machine too (a pool's first phase).
    ``launch_ids``: launch only these (a pool moving runs here; the pod's other runs stay
    in its sweep as they are). ``attempts``: run id -> the attempt its launch is (a run
    moved from another pod goes on counting there: this is where it is relaunched).
    ``nodes``: run id -> its ``multinode.Node`` on this pod (SPEC §9): that node's launch,
    started or not as the whole run's last state says; a row on several nodes without
    one is refused (exit 2) unless ``placing`` (a pool's first phase, before placement).
    ``probed``: that first phase's probe and state check of this pod (``SweepStart.probed``),
    taken as this start's own: ``sweep.start`` re-checks both under its lock.
    Raises ``SweepCsvError``/``InputError`` (exit 2: bad CSV, configs missing on the pod,
    bad selection), ``TransitionRefused`` (exit 3), transport errors (exit 4)."""
    path = Path(cfg.local_path(csv or cfg.sweep.csv))
    rows = read_sweep_csv(path)
    selected = select_rows(rows, match=match, start_at=start_at, limit=limit)
    if run_ids is not None:
        selected = [r for r in selected if r.run_id in run_ids]
    if not selected:
        raise InputError(f"no run of {path} matches the selection", hint="check --match / --start-at / --limit")
    settings = SweepSettings.from_config(cfg)
    sweep = cfg.get("sweep")
    if probed is None:
        probe = agent.call("sweep.probe", timeout=120, workdir=cfg.get("remote.workdir"),
                           sweep_workdir=sweep.get("workdir") or ".", entrypoint=sweep.get("entrypoint"),
                           configs=[[r.line, r.config] for r in selected], run_ids=[r.run_id for r in selected],
                           remote_env=dict(settings.remote_env), data_dir=cfg.get("remote.data_dir", None))
    else:
        probe = probed.probe
    runner_dead = not (probe.get("runner") or {}).get("alive")
    current = probed.state if probed is not None else None
    if current is None and (not dry_run or check_state):
        current = fsm.check("sweep-start", runner_dead=runner_dead, known=probe.get("fsm_state"))
    problems = []
    if not probe.get("run_root_exists"):
        raise InputError(f"sweep.workdir {probe['run_root']} does not exist on the pod",
                         hint="run 'wf checkout' first (sweep.workdir is relative to remote.workdir)")
    if probe.get("entrypoint_missing"):
        problems.append(f"sweep.entrypoint {sweep.get('entrypoint')} is not in {probe['run_root']}")
    by_line = {r.line: r for r in selected}
    for line, cfg_path in probe.get("missing_configs") or []:
        problems.append(f"line {line}: run {by_line[line].run_id}: config {cfg_path} not found in {probe['run_root']}")
    if problems:
        raise InputError(f"{path}: {len(problems)} problem(s) on the pod:\n  " + "\n  ".join(problems),
                         hint="config paths are relative to sweep.workdir in the checkout")
    gpus = tuple(str(g) for g in probe.get("gpus") or [])
    plans = plan_runs(selected, cfg, outputs_dir=probe["outputs_dir"],
                      data_dir=probe.get("data_dir") or probe["outputs_dir"], gpu_count=len(gpus),
                      workdir=probe["run_root"])
    previous = probe.get("runs") or {}
    artifacts = Path(cfg.local_path(cfg.get("local.artifacts_dir")))
    planned = []
    for p in plans:
        prev = (previous.get(p.run_id) or {}).get("state")
        if p.nodes > 1 and not placing and (launch_ids is None or p.run_id in launch_ids):
            node = nodes.get(p.run_id)
            if node is None:
                check_fits(p.run_id, p.nodes, 1)
            p, prev = as_node(p, node, settings.remote_env), node.previous
        if prev == "success":
            planned.append(PlannedRun(p, False, "already ok", prev))
        elif launch_ids is not None and p.run_id not in launch_ids:
            planned.append(PlannedRun(p, False, "kept as it is", prev))
        else:
            local = local_copy(artifacts, p.run_id)
            # a run the pod has no dir of whose local copy did not end ok ran on a pod that lost it
            lost_there = prev is None and local.get("state") in NOT_OK
            if retry_failed and prev not in NOT_OK and not lost_there:
                planned.append(PlannedRun(p, False, "never ran" if prev is None else f"state {prev}", prev))
            else:
                how = decide(previous.get(p.run_id), local, artifacts / p.run_id)
                planned.append(PlannedRun(p, True, "retry" if prev in NOT_OK or lost_there else "run", prev, how))
    venv_bin = probe["venv_bin"]
    env = dict(settings.remote_env)
    env["PATH"] = f"{venv_bin}:$PATH"
    result = SweepStart(runs=tuple(planned), gpus=gpus, gpu_source=probe.get("gpu_source") or "none", env=env,
                        venv_bin=venv_bin, dry_run=dry_run, session=settings.session,
                        probed=Probed(probe, current))
    if dry_run:
        return result
    push_local(agent.transport, probe["outputs_dir"], artifacts,
               [pr.plan.run_id for pr in planned if pr.launch and pr.resume.source == "local"])
    # a run a pool re-placed counts on from the placement record's attempt (``attempts``)
    run_docs = [dict(pr.plan.to_dict(), launch=pr.launch,
                     attempts_before=max(pr.resume.attempt, int((attempts or {}).get(pr.plan.run_id, 1))) - 1
                     if pr.resume else 0)
                for pr in planned]
    doc = agent.call("sweep.start", timeout=120, plan={"runs": run_docs},
                     settings={"gpus": list(gpus), "on_failure": settings.on_failure,
                               "max_retries": settings.max_retries, "out_mode": settings.out_mode,
                               "sync_interval_secs": settings.sync_interval_secs, "venv_bin": venv_bin,
                               "gpu_lease_dir": env.get("PODFLOW_GPU_LEASE_DIR"),
                               "retry_failed": retry_failed},
                     csv_text=path.read_text(encoding="utf-8"), csv_name=str(path),
                     config=_plain(cfg.data), expect=[current], enforce=fsm.enforce, by=_who(),
                     session=settings.session, remote_env=dict(settings.remote_env))
    return SweepStart(runs=result.runs, gpus=gpus, gpu_source=result.gpu_source, env=env, venv_bin=venv_bin,
                      dry_run=False, sweep_id=doc.get("sweep_id"), manifests=doc.get("manifests") or {},
                      session=settings.session, from_state=doc.get("from"))


def metrics_options(cfg) -> Dict[str, Any]:
    """``sweep.metrics`` as the pod's status wants it; InputError (exit 2) for a pattern
    that is not a regular expression with a named group."""
    from workflow.agent.metrics import compile_patterns

    opts = dict(cfg.get("sweep.metrics", None) or {})
    try:
        compile_patterns(opts.get("patterns"))
    except ValueError as exc:
        raise InputError(str(exc), hint="e.g. 'acc: (?P<acc>[0-9.]+)'") from None
    return {"patterns": list(opts.get("patterns") or []), "primary": opts.get("primary"),
            "mode": opts.get("mode") or "min"}


def sweep_status(agent, *, tail: int = 15, metrics: Optional[Mapping[str, Any]] = None,
                 timeout: float = 120, wait_secs: float = 0.0) -> SweepStatus:
    """Every run of the latest sweep, in one call (the repair pass included); ``metrics``:
    ``metrics_options(cfg)``. ``wait_secs``: the call first waits up to that long for the
    runner to end (``sweep.wait``; at once when none runs), so that a reader polling every
    ``wait_secs`` hears of the end when it comes, not at its next read."""
    if wait_secs > 0:
        return SweepStatus.from_doc(agent.call("sweep.wait", timeout=timeout + wait_secs, wait_secs=wait_secs,
                                               tail=tail, metrics=dict(metrics or {})))
    return SweepStatus.from_doc(agent.call("sweep.status", timeout=timeout, tail=tail, metrics=dict(metrics or {})))


def wait_sweep(agent, timeout_secs: Optional[float] = None, *,
               on_progress: Optional[Callable[[SweepStatus], None]] = None,
               metrics: Optional[Mapping[str, Any]] = None, mirror=None) -> SweepStatus:
    """Block until the runner ends; returns promptly when it does. ``timeout_secs``:
    WaitTimeout (exit 5), the sweep goes on. InputError when no sweep was ever started.
    ``mirror`` (``workflow.sweep.mirror.Mirror``): the running runs are mirrored locally
    every ``mirror.interval`` seconds meanwhile, in the background."""
    deadline = None if timeout_secs is None else time.monotonic() + max(0.0, float(timeout_secs))
    try:
        while True:
            left = MAX_BLOCK_SECS if deadline is None else max(0.0, min(MAX_BLOCK_SECS, deadline - time.monotonic()))
            if on_progress is not None:
                left = min(left, 10.0)
            if mirror is not None and mirror.enabled:
                left = min(left, max(0.5, mirror.interval))
            st = SweepStatus.from_doc(agent.call("sweep.wait", timeout=left + _SLACK_SECS, wait_secs=left,
                                                 metrics=dict(metrics or {})))
            if st.state == "none":
                raise InputError("no sweep has been started on this pod", hint="wf sweep-start")
            if st.finished and not st.active:
                return st
            if mirror is not None:
                mirror.tick(st)
            if on_progress is not None:
                on_progress(st)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"the sweep is still running after {timeout_secs}s "
                                  f"({st.percent:.0f}% done); it goes on",
                                  hint="wf sweep-wait waits again; wf sweep-status shows each run")
    finally:
        if mirror is not None:
            mirror.close()


@dataclass(frozen=True)
class SweepStop:
    status: SweepStatus
    cancelled: Tuple[str, ...]
    state_moved: bool
    note: Optional[str] = None


def stop_sweep(agent, fsm, *, grace_secs: Optional[float] = None) -> SweepStop:
    """Cancel every active run (whole process groups, torchrun workers included), end the
    runner, and move the state SWEEP_RUNNING -> CHECKED_OUT."""
    seen = fsm.check("sweep-stop")
    request: Dict[str, Any] = {}
    if grace_secs is not None:
        request["grace_secs"] = grace_secs
    doc = agent.call("sweep.stop", timeout=(grace_secs or 10.0) * 2 + _SLACK_SECS + 30, **request)
    note, moved = None, True
    try:
        fsm.advance("sweep-stop", seen)
    except TransitionRefused as exc:
        moved, note = False, f"the state was not moved: it is now {exc.current}"
    st = SweepStatus.from_doc(agent.call("sweep.status", timeout=120)) if moved else SweepStatus.from_doc(doc)
    return SweepStop(status=st, cancelled=tuple(doc.get("cancelled") or ()), state_moved=moved, note=note)


def describe_plan(start: SweepStart) -> List[str]:
    """``--dry-run`` text: each run's exact argv, cwd and environment."""
    out = [f"GPUs: {', '.join(start.gpus) if start.gpus else 'none (runs one at a time on the CPU)'}"
           f" (from {start.gpu_source})"]
    for pr in start.runs:
        p = pr.plan
        mark = "run" if pr.launch else f"skip ({pr.why})"
        out.append(f"line {p.line}: {p.run_id}  [{mark}]" + (f"  node {p.node_rank} of {p.nodes}" if p.nodes > 1 else ""))
        out.append(f"  cwd:  {p.workdir}")
        out.append(f"  argv: {shlex.join(pr.argv)}")
        cvd = f"<{p.gpus} of {','.join(start.gpus)}, assigned at launch>" if p.gpus else "''"
        env = dict(start.env)
        env.update(p.env)
        env.update(pr.resume_env)
        out.append("  env:  CUDA_VISIBLE_DEVICES=" + cvd + " " +
                   " ".join(f"{k}={shlex.quote(v) if k != 'PATH' else v}" for k, v in sorted(env.items())))
        if p.timeout_secs:
            out.append(f"  timeout: {p.timeout_secs}s")
        if p.script_out_dir != p.out_dir:
            out.append(f"  writes to {p.script_out_dir}, mirrored into {p.out_dir}")
        if pr.resume and pr.resume.source == "pod":
            out.append(f"  resumes (attempt {pr.resume.attempt}) from its earlier files in {p.out_dir}")
        elif pr.resume and pr.resume.source == "local":
            out.append(f"  resumes (attempt {pr.resume.attempt}) from the local copy {pr.resume.local_dir},"
                       f" pushed into {p.out_dir} first")
    return out
