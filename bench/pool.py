"""Pool bench (local provider with pod.count, real runners in tmux, sleeping jobs).

    .venv/bin/python bench/pool.py [--runs 24] [--sleep 2] [--status-runs 300]

1. makespan of RUNS sleep-bound runs on 1 pod vs 3 pods (sweep-start to the end of
   sweep-wait); the ratio is the speed-up (target >= 2.6);
2. sweep-status --json of 3 pods x N runs vs 1 pod x N runs (the pods are read at once;
   target <= 1.5x).

Pods of the ``local`` provider run on this one machine: the speed-up is bounded by its
cores (each sleeping job still costs a python start).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_sweep_run_helpers import SweepProject  # noqa: E402


def _pool(base: Path, name: str, pods: int, rows: str) -> SweepProject:
    sp = SweepProject(base / name, {"pod": {"provider": "local", "count": pods}},
                      "run_id,config,seed,overrides,notes\n" + rows)
    for i in range(1, pods):
        shutil.copytree(sp.repo, sp.pod / f"repo-p{i}", symlinks=True)
    return sp


def bench_makespan(base: Path, runs: int, sleep: float) -> dict:
    rows = "".join(f"m{i:03d},configs/tiny.json,{i},steps=1 sleep={sleep},\n" for i in range(runs))
    out = {}
    for pods in (1, 3):
        sp = _pool(base, f"make{pods}", pods, rows)
        t0 = time.monotonic()
        sp.wf("sweep-start", check=0, timeout=600)
        sp.wf("sweep-wait", "--timeout-secs", "1200", check=0, timeout=1300)
        out[f"pods{pods}_s"] = round(time.monotonic() - t0, 2)
    out["speedup"] = round(out["pods1_s"] / out["pods3_s"], 2)
    return out


def bench_status(base: Path, runs: int, repeat: int = 5) -> dict:
    rows = "".join(f"s{i:04d},configs/tiny.json,{i},steps=1 sleep=0,\n" for i in range(min(runs, 999)))
    out = {}
    for pods in (1, 3):
        sp = _pool(base, f"status{pods}", pods, rows)
        if pods == 3:  # 3 pods x N runs: each pod its own N runs (ids p0s0000, ...)
            for i in range(3):
                sp.write_csv("run_id,config,seed,overrides,notes\n" + rows.replace("s0", f"p{i}s0"))
                sp.wf("sweep-start", "--pod", f"p{i}", check=0, timeout=600)
                sp.wf("sweep-wait", "--pod", f"p{i}", "--timeout-secs", "1200", check=0, timeout=1300)
        else:
            sp.wf("sweep-start", check=0, timeout=600)
            sp.wf("sweep-wait", "--timeout-secs", "1200", check=0, timeout=1300)
        times = []
        for _ in range(repeat):
            t0 = time.monotonic()
            doc = json.loads(sp.wf("sweep-status", "--json", check=0).stdout)
            times.append(time.monotonic() - t0)
        out[f"pods{pods}_runs"] = len(doc["runs"])
        out[f"pods{pods}_s"] = round(statistics.median(times), 3)
    out["ratio"] = round(out["pods3_s"] / out["pods1_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--sleep", type=float, default=2.0)
    ap.add_argument("--status-runs", type=int, default=300)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="podflow-bench-pool-"))
    try:
        result = {"makespan": bench_makespan(base, args.runs, args.sleep),
                  "status": bench_status(base, args.status_runs)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
