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

#: This checkout (the package is installed editable from it).
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = Path(".podflow") / "demo"


@contextmanager
def _demo_runtime(root: Path, progress: Optional[str]) -> Iterator[Path]:
    """The demo's own config (examples/demo.yaml) and cwd (.podflow/demo/), so nothing
    of the user's config, session or pod is read or written; restored afterwards."""
    from workflow import runtime

    examples = root / "examples"
    python = root / ".venv-torch" / "bin" / "python"
    if not (examples / "demo.yaml").is_file() or not (root / ".git").exists():
        raise InputError(f"the demo needs this repository's examples/ and git history ({root})")
    if not python.exists():
        raise InputError(f"{python} is missing: the demo's pod uses it as the image's python (CPU torch)",
                         hint="bash scripts/setup  creates it (or run: bash scripts/demo)")
    demo = Path(os.environ.get("PODFLOW_DEMO_DIR") or root / DEMO_DIR).resolve()
    demo.mkdir(parents=True, exist_ok=True)
    old_cwd, old_cfg = os.getcwd(), os.environ.get("WF_CONFIG")
    os.environ["WF_CONFIG"] = str(examples / "demo.yaml")
    os.chdir(demo)
    runtime.reset()
    flags: Dict[str, Any] = {"checkout.repo_url": str(root), "remote.python": str(python),
                             "sweep.csv": str(examples / "demo-sweep.csv")}
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
               "json": "print one JSON document (the results) at the end"})
def demo(c, progress=None, timeout_secs=None, json=False):
    """Run the whole flow on this machine: pod-up, bootstrap, checkout, sweep-start, sweep-wait, fetch-all.

    Uses the `local` provider and the examples/ project of this repository (config
    examples/demo.yaml, sweep examples/demo-sweep.csv; a CPU torchrun DDP job per row)
    with everything under .podflow/demo/ (or $PODFLOW_DEMO_DIR), so your own config
    and pod are untouched.
    Starts over each time (previous demo runs removed, state reset to INIT) and ends
    with a results table. Exit 0 when every run succeeded, 1 otherwise.
    """
    from invoke import Exit

    from workflow import prepare, runtime
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
    with _demo_runtime(REPO_ROOT, "quiet" if json else progress) as demo_dir:
        cfg = runtime.config()
        say(f"everything goes under {demo_dir}")
        _start_over(say)
        say("pod-up (local provider)")
        pod_up(cfg)
        echo = (lambda *_a, **_k: None) if quiet else print
        say("bootstrap")
        prepare.run("bootstrap", echo=echo)
        say(f"checkout of {REPO_ROOT} (venv from {cfg.remote.python})")
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
        print(f"demo {'done' if status.ok else 'finished with failed runs'} in {time.monotonic() - t0:.0f}s; "
              f"logs and metrics in each run's dir above (stdout.log, metrics.jsonl, summary.json)")
    if not status.ok:
        raise Exit(code=1)
