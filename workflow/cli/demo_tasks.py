"""demo: the whole podflow flow on the `local` provider with examples/ (SPEC §3)."""

from __future__ import annotations

import json as jsonlib
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from workflow.cli.boundary import print_json, wf_task
from workflow.errors import InputError

#: The demo's project (train.py, configs, demo.yaml, demo-sweep.csv): package data, so
#: ``wf demo`` works from a plain ``pip install``; the repository's examples/ links here.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO_DIR = Path(".podflow") / "demo"
_GIT_ID = ["-c", "user.name=podflow demo", "-c", "user.email=demo@podflow.invalid"]


def _torch_python(python: Optional[str]) -> str:
    """The python the demo's pod makes its venv from: ``--python``, else the one running
    ``wf``. Bad input (exit 2, one line saying what to install) unless it has torch."""
    import subprocess
    import sys

    chosen = python or sys.executable
    path = os.path.abspath(shutil.which(chosen) or chosen)  # the demo runs in its own dir
    if not os.path.isfile(path):
        raise InputError(f"wf demo: no python at {chosen} (--python takes the path of a python that has torch)")
    try:
        ok = subprocess.run([path, "-c", "import torch"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        raise InputError(f"wf demo needs torch in {path}: pip install torch (the CPU build is enough), "
                         f"or run wf demo --python PATH with a python that has it")
    return path


def _demo_project(demo: Path) -> Path:
    """A git repository holding the packaged examples/ (what the demo's checkout clones):
    made once under the demo dir, committed again only when the packaged files changed."""
    import subprocess

    if not shutil.which("git"):
        raise InputError("wf demo needs git: install it (e.g. apt-get install git)")
    repo = demo / "project"
    if (repo / "examples").exists():
        shutil.rmtree(repo / "examples")
    shutil.copytree(EXAMPLES, repo / "examples", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "out"))

    def git(*args: str) -> str:
        return subprocess.run(["git", *_GIT_ID, *args], cwd=repo, check=True, capture_output=True,
                              text=True).stdout

    if not (repo / ".git").exists():
        git("init", "-q")
    if git("status", "--porcelain"):
        git("add", "-A")
        git("commit", "-q", "-m", "the podflow demo project (examples/)")
    return repo


@contextmanager
def _demo_runtime(python: str, progress: Optional[str], pods: int = 1) -> Iterator[Path]:
    """The demo's own config (examples/demo.yaml) and cwd (.podflow/demo/), so nothing
    of the user's config, session or pod is read or written; restored afterwards."""
    from workflow import runtime

    demo = Path(os.environ.get("PODFLOW_DEMO_DIR") or DEMO_DIR).resolve()
    demo.mkdir(parents=True, exist_ok=True)
    project = _demo_project(demo)
    old_cwd, old_cfg = os.getcwd(), os.environ.get("WF_CONFIG")
    os.environ["WF_CONFIG"] = str(EXAMPLES / "demo.yaml")
    os.chdir(demo)
    runtime.reset()
    flags: Dict[str, Any] = {"checkout.repo_url": str(project), "remote.python": python,
                             "sweep.csv": str(EXAMPLES / "demo-sweep.csv")}
    if progress:
        flags["progress"] = progress
    if pods > 1:  # a pool on this machine; runs slow enough to be caught halfway, mirrored often
        flags.update({"pod.count": pods, "sweep.mirror_interval_secs": 1, "sweep.resume_args": ["--resume"],
                      "sweep.args": ["{config}", "--seed={seed}", "--out_dir={out_dir}", "sleep_secs=0.5"]})
    runtime.set_flags(**flags)
    try:
        yield demo
    finally:
        runtime.reset()
        os.chdir(old_cwd)
        if old_cfg is None:
            os.environ.pop("WF_CONFIG", None)
        else:
            os.environ["WF_CONFIG"] = old_cfg


def _start_over(say) -> None:
    """On every pod: up again if a previous demo took it down, stop a sweep a previous demo
    left running, remove its runs; then the artifacts and the pool's placement record; state INIT."""
    from workflow import pool, runtime
    from workflow.providers import get_provider
    from workflow.sweep import pooled, read_sweep_csv

    rows = read_sweep_csv(runtime.config().local_path(runtime.config().sweep.csv))
    for pod in pool.pods(runtime.config()):
        with runtime.on_pod(pod):
            cfg, agent = runtime.config(), runtime.agent()
            get_provider(cfg).bring_up()
            st = agent.call("sweep.status", timeout=120)
            if (st.get("runner") or {}).get("alive"):
                say("a previous demo sweep is still running: stopping it")
                agent.call("sweep.stop", timeout=120, grace_secs=5)
            for row in rows:
                shutil.rmtree(Path(cfg.remote.outputs_dir) / row.run_id, ignore_errors=True)
            runtime.fsm().reset("INIT", "wf demo: start over")
    cfg = runtime.config()
    for row in rows:
        shutil.rmtree(cfg.local_path(cfg.local.artifacts_dir) / row.run_id, ignore_errors=True)
    pooled.record_path(cfg).unlink(missing_ok=True)


def _results(status, artifacts: Path, pod_of: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
    rows = []
    for r in status.runs:
        summary: Dict[str, Any] = {}
        if (artifacts / r.id / "summary.json").is_file():
            try:
                summary = jsonlib.loads((artifacts / r.id / "summary.json").read_text())
            except ValueError:
                summary = {}
        loss = summary.get("final_loss")
        if loss is None:
            loss = (r.metrics or {}).get("loss")
        row = {"run": r.id, "state": r.state, "final_loss": loss, "duration_secs": r.duration_secs,
               "files": str(artifacts / r.id)}
        if pod_of is not None:  # a pool: where it ended, which launch it was, where it resumed from
            row.update(pod=pod_of.get(r.id), attempt=r.attempt, resumed_from_step=summary.get("resumed_from_step"))
        rows.append(row)
    return rows


def _table(rows: List[Dict[str, Any]]) -> str:
    pool = bool(rows) and "pod" in rows[0]
    cells = [("RUN", "STATE") + (("POD", "ATTEMPT", "RESUMED AT") if pool else ()) + ("FINAL LOSS", "DURATION", "FILES")]
    for r in rows:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        dur = "-" if r["duration_secs"] is None else f"{r['duration_secs']:.1f}s"
        where = (r["pod"] or "-", str(r["attempt"] or "-"),
                 f"step {r['resumed_from_step']}" if r["resumed_from_step"] else "-") if pool else ()
        cells.append((r["run"], r["state"]) + where + (loss, dur, r["files"]))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


@wf_task(help={"progress": "realtime, milestones or quiet (default: milestones)",
               "timeout_secs": "give up waiting for the sweep after N seconds (exit 5; default 900)",
               "json": "print one JSON document (the results) at the end",
               "python": "a python that has torch, for the runs' venv (default: the one running wf)",
               "pods": "run the sweep on a pool of N local pods (default 1)",
               "kill_one": "with --pods: kill the last pod halfway through its run, so that its run finishes "
                           "on another pod, resumed from its checkpoint (default; --no-kill-one keeps every pod)"})
def demo(c, progress=None, timeout_secs=None, json=False, python=None, pods=1, kill_one=True):
    """Run the whole flow on this machine: pod-up, bootstrap, checkout, sweep-start, sweep-wait, fetch-all.

    Uses the `local` provider and the examples/ project shipped in the package (config
    examples/demo.yaml, sweep examples/demo-sweep.csv; a CPU torchrun DDP job per row),
    committed to a git repository under .podflow/demo/project for checkout to clone,
    with everything under .podflow/demo/ (or $PODFLOW_DEMO_DIR), so your own config
    and pod are untouched. Needs git and torch (in --python, or the python running wf;
    exit 2 saying what to install otherwise).
    Starts over each time (previous demo runs removed, state reset to INIT) and ends
    with a results table; under it, for a run that failed, how it ended and the last
    lines of its log. Exit 0 when every run succeeded, 1 otherwise.

    With --pods 2 the rows are placed on 2 local pods (SPEC §8; each step on every pod at
    once) and, halfway through the last pod's run (once its checkpoint is mirrored here),
    that pod is killed as `wf pod-down --destroy` kills a local pool pod: every process
    of it ended at once. The wait sees the pod down, re-places its run on the other pod
    (attempt 2), which resumes it from the checkpoint; the table shows each run's pod,
    attempt and the step it resumed at.
    """
    from workflow import prepare, runtime
    from workflow.cli.task_tasks import _int, _secs
    from workflow.providers.lifecycle import pod_up
    from workflow.sweep.control import start_sweep, wait_sweep
    from workflow.sweep.fetch import Fetcher

    quiet = progress == "quiet" or json
    t0 = time.monotonic()

    def say(text: str) -> None:
        if not quiet:
            print(f"[demo {time.monotonic() - t0:5.1f}s] {text}", flush=True)

    limit = _secs(timeout_secs, "--timeout-secs") or 900.0
    count = _int(pods, "--pods") or 1
    if count < 1:
        raise InputError(f"--pods {pods}: give a number of pods >= 1")
    torch_python = _torch_python(python)
    echo = (lambda *_a, **_k: None) if quiet else print
    story: Dict[str, Any] = {}
    with _demo_runtime(torch_python, "quiet" if json else progress, count) as demo_dir:
        cfg = runtime.config()
        say(f"everything goes under {demo_dir}")
        _start_over(say)
        artifacts = cfg.local_path(cfg.local.artifacts_dir)
        if count > 1:
            status, pod_of, story = _pool_flow(say, echo, limit, bool(kill_one), artifacts)
        else:
            pod_of = None
            say("pod-up (local provider)")
            pod_up(cfg)
            say("bootstrap")
            prepare.run("bootstrap", echo=echo)
            say(f"checkout of {cfg.checkout.repo_url} (venv from {cfg.remote.python})")
            prepare.run("checkout", echo=echo)
            started = start_sweep(cfg, runtime.agent(), runtime.fsm())
            say(f"sweep-start: {len(started.to_run)} run(s) of {cfg.sweep.csv} "
                f"(torchrun --nproc_per_node={cfg.sweep.nproc_per_node}, CPU)")
            say("sweep-wait")
            status = wait_sweep(runtime.agent(), limit)
            say(f"sweep ended: {', '.join(f'{k} {v}' for k, v in sorted(status.counts.items()))}")
            say(f"fetch-all into {artifacts}")
            Fetcher(runtime.transport(), runtime.agent(), cfg.remote.outputs_dir, artifacts, config=cfg).fetch_all()
        rows = _results(status, artifacts, pod_of)
    _finish(json, status, rows, story, t0)


def _finish(json: bool, status, rows: List[Dict[str, Any]], story: Dict[str, Any], t0: float) -> None:
    """The results: a table (or one JSON document), why runs failed, what the pool went through."""
    from invoke import Exit

    from workflow.cli.sweep_tasks import failure_tails

    if json:
        print_json({"ok": status.ok, "runs": rows, "seconds": round(time.monotonic() - t0, 1), **story})
    else:
        print(_table(rows))
        for line in failure_tails(status, max_lines=15):  # why a run failed, right under the table
            print(line)
        if story.get("killed"):
            moved = [r for r in rows if r["run"] in story["killed"]["runs"]]
            print(f"{story['killed']['pod']} was killed halfway; "
                  + "; ".join(f"{r['run']} finished on {r['pod']} as attempt {r['attempt']}"
                              + (f", resumed from its checkpoint at step {r['resumed_from_step']}"
                                 if r["resumed_from_step"] else ", started afresh") for r in moved))
        print(f"demo {'done' if status.ok else 'finished with failed runs'} in {time.monotonic() - t0:.0f}s; "
              f"logs and metrics in each run's dir above (stdout.log, metrics.jsonl, summary.json)")
    if not status.ok:
        raise Exit(code=1)


def _pool_flow(say, echo, limit: float, kill_one: bool, artifacts: Path):
    """The demo's flow on the pool of local pods: each step on every pod at once, the
    sweep placed over them and kept busy (``balance.Keeper``, as sweep-wait does), the last
    pod holding a run killed halfway through it. Returns the pool's ``SweepStatus``, run id -> pod,
    and what happened (``{"killed": {"pod", "runs"}}``)."""
    from workflow import pool, prepare, runtime
    from workflow.providers.lifecycle import pod_down, pod_up
    from workflow.sweep import mirror, pooled
    from workflow.sweep.balance import Keeper
    from workflow.sweep.control import SweepStatus, start_sweep
    from workflow.sweep.fetch import Fetcher

    cfg = runtime.config()
    pods = pool.pods(cfg)

    def on_every_pod(work) -> Dict[str, Any]:
        return pool.values(pool.fan_out(pods, lambda pod: work()))

    def pod_echo(line: str) -> None:
        echo(f"{runtime.current_pod().name}: {line}")

    say(f"pod-up ({len(pods)} local pods: {', '.join(p.name for p in pods)}; each step on every pod at once)")
    on_every_pod(lambda: pod_up(runtime.config()))
    say("bootstrap")
    on_every_pod(lambda: prepare.run("bootstrap", echo=pod_echo))
    say(f"checkout of {cfg.checkout.repo_url} (venv from {cfg.remote.python})")
    on_every_pod(lambda: prepare.run("checkout", echo=pod_echo))
    placed = pooled.plan(pods)
    holders = [p for p in pods if p.name in placed.runs]
    started = pool.values(pool.fan_out(holders, lambda pod: start_sweep(
        runtime.config(), runtime.agent(), runtime.fsm(), run_ids=placed.runs[pod.name])))
    pooled.save(cfg, {pr.plan.run_id: name for name, st in started.items() for pr in st.runs},
                next(iter(started.values())).sweep_id)
    say("sweep-start: " + "; ".join(f"{name}: {', '.join(placed.runs[name] or [])}" for name in started)
        + f" (torchrun --nproc_per_node={cfg.sweep.nproc_per_node}, CPU)")

    victim, story = holders[-1], {}  # the last pod that has a run
    mirrors: Dict[str, Any] = {}

    def mirrored(st):  # in a pod's context: its running runs mirrored here, in the background
        name = runtime.current_pod().name
        if name not in mirrors:
            mirrors[name] = mirror.for_current_pod(lambda text: say(f"{name}: {text} (retried)"))
        mirrors[name].tick(st)
        return st, None

    def kill_halfway(rnd) -> None:
        read = next((r for r in rnd.results if r.pod.name == victim.name and r.ok), None)
        if story or not kill_one or read is None:
            return
        held = pooled.load(cfg).held_by(victim.name)
        caught = [r.id for r in read.value[0].runs if r.state == "running" and r.id in held
                  and (artifacts / r.id / "checkpoint.pt").is_file()]
        if not caught:
            return
        say(f"killing {victim.name} halfway: {', '.join(caught)} runs there, its checkpoint mirrored here")
        with runtime.on_pod(victim):
            done = pod_down(runtime.config(), destroy=True)
        say(f"{victim.name} killed: {done['ended']} process(es) ended at once (its runner and runs); "
            "the local provider now says it is terminated")
        story["killed"] = {"pod": victim.name, "runs": caught}

    say("sweep-wait (balancing the pool; a down pod's runs are re-placed)")
    keeper = Keeper(cfg, pods, say=say, each=mirrored)
    try:
        rnd = keeper.wait(limit, interval=1.0, after=kill_halfway)
    finally:
        for m in mirrors.values():
            m.close()
    if kill_one and not story:
        say(f"{victim.name}'s runs ended before one could be caught halfway: no pod was killed")
    doc = keeper.doc(rnd)
    status = SweepStatus.from_doc(doc)
    say(f"sweep ended: {', '.join(f'{k} {v}' for k, v in sorted(status.counts.items()))}")
    record = pooled.load(cfg)
    up = [p for p in pods if p.name not in rnd.down]
    say(f"fetch-all into {artifacts}" + (f" (from {', '.join(p.name for p in up)}: the pods that are up)"
                                         if rnd.down else ""))
    pool.raise_failures(pool.fan_out(up, lambda pod: Fetcher(
        runtime.transport(), runtime.agent(), runtime.config().remote.outputs_dir, artifacts,
        config=runtime.config()).fetch_all(skip=[r for r, name in record.runs.items() if name != pod.name])))
    return status, {run["id"]: run["pod"] for run in doc["runs"]}, story
