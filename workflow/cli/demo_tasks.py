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
def _demo_runtime(python: str, progress: Optional[str]) -> Iterator[Path]:
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
    """Stop a sweep a previous demo left running, remove its runs and artifacts, state INIT."""
    from workflow import runtime
    from workflow.sweep import read_sweep_csv

    cfg, agent = runtime.config(), runtime.agent()
    st = agent.call("sweep.status", timeout=120)
    if (st.get("runner") or {}).get("alive"):
        say("a previous demo sweep is still running: stopping it")
        agent.call("sweep.stop", timeout=120, grace_secs=5)
    outputs = Path(cfg.remote.outputs_dir)
    artifacts = cfg.local_path(cfg.local.artifacts_dir)
    for row in read_sweep_csv(cfg.local_path(cfg.sweep.csv)):
        for base in (outputs, artifacts):
            if (base / row.run_id).exists():
                shutil.rmtree(base / row.run_id)
    runtime.fsm().reset("INIT", "wf demo: start over")


def _results(status, artifacts: Path) -> List[Dict[str, Any]]:
    rows = []
    for r in status.runs:
        loss = None
        summary = artifacts / r.id / "summary.json"
        if summary.is_file():
            try:
                loss = jsonlib.loads(summary.read_text()).get("final_loss")
            except ValueError:
                loss = None
        if loss is None:
            loss = (r.metrics or {}).get("loss")
        rows.append({"run": r.id, "state": r.state, "final_loss": loss, "duration_secs": r.duration_secs,
                     "files": str(artifacts / r.id)})
    return rows


def _table(rows: List[Dict[str, Any]]) -> str:
    cells = [("RUN", "STATE", "FINAL LOSS", "DURATION", "FILES")]
    for r in rows:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        dur = "-" if r["duration_secs"] is None else f"{r['duration_secs']:.1f}s"
        cells.append((r["run"], r["state"], loss, dur, r["files"]))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


@wf_task(help={"progress": "realtime, milestones or quiet (default: milestones)",
               "timeout_secs": "give up waiting for the sweep after N seconds (exit 5; default 900)",
               "json": "print one JSON document (the results) at the end",
               "python": "a python that has torch, for the runs' venv (default: the one running wf)"})
def demo(c, progress=None, timeout_secs=None, json=False, python=None):
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
    """
    from invoke import Exit

    from workflow import prepare, runtime
    from workflow.cli.sweep_tasks import failure_tails
    from workflow.cli.task_tasks import _secs
    from workflow.providers.lifecycle import pod_up
    from workflow.sweep.control import start_sweep, wait_sweep
    from workflow.sweep.fetch import Fetcher

    quiet = progress == "quiet" or json
    t0 = time.monotonic()

    def say(text: str) -> None:
        if not quiet:
            print(f"[demo {time.monotonic() - t0:5.1f}s] {text}", flush=True)

    limit = _secs(timeout_secs, "--timeout-secs") or 900.0
    torch_python = _torch_python(python)
    with _demo_runtime(torch_python, "quiet" if json else progress) as demo_dir:
        cfg = runtime.config()
        say(f"everything goes under {demo_dir}")
        _start_over(say)
        say("pod-up (local provider)")
        pod_up(cfg)
        echo = (lambda *_a, **_k: None) if quiet else print
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
        artifacts = cfg.local_path(cfg.local.artifacts_dir)
        say(f"fetch-all into {artifacts}")
        Fetcher(runtime.transport(), runtime.agent(), cfg.remote.outputs_dir, artifacts, config=cfg).fetch_all()
        rows = _results(status, artifacts)
    if json:
        print_json({"ok": status.ok, "runs": rows, "seconds": round(time.monotonic() - t0, 1)})
    else:
        print(_table(rows))
        for line in failure_tails(status, max_lines=15):  # why a run failed, right under the table
            print(line)
        print(f"demo {'done' if status.ok else 'finished with failed runs'} in {time.monotonic() - t0:.0f}s; "
              f"logs and metrics in each run's dir above (stdout.log, metrics.jsonl, summary.json)")
    if not status.ok:
        raise Exit(code=1)
