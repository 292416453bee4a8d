"""Sweep bench (local provider, real runner, tmux, python launcher with sleeping jobs).

    .venv/bin/python bench/sweep.py [--runs 10] [--gpus 8] [--pack-runs 32] [--sleep 3]

1. gap between consecutive runs on the CPU (one at a time): next started_at - previous
   finished_at (target <= 0.5 s);
2. packing on 8 fake GPUs (remote.env CUDA_VISIBLE_DEVICES) with sleeping 1-GPU runs:
   ideal makespan (sum of run-time x GPUs / GPUs) over the real one (target >= 0.9);
3. sweep-status at 10/100/1000 runs: seconds and round trips (target: one each).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_sweep_run_helpers import SweepProject  # noqa: E402


def _t(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def bench_gap(base: Path, runs: int) -> dict:
    rows = "".join(f"gap{i:03d},configs/tiny.json,{i},steps=1 sleep=0.01,\n" for i in range(runs))
    sp = SweepProject(base / "gap", {}, "run_id,config,seed,overrides,notes\n" + rows)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "300", check=0)
    st = [sp.run_status(f"gap{i:03d}") for i in range(runs)]
    gaps = [_t(b["started_at"]) - _t(a["finished_at"]) for a, b in zip(st, st[1:])]
    return {"runs": runs, "gap_mean_s": round(statistics.mean(gaps), 3), "gap_median_s": round(statistics.median(gaps), 3),
            "gap_max_s": round(max(gaps), 3), "run_mean_s": round(statistics.mean(_t(s["finished_at"]) - _t(s["started_at"]) for s in st), 3)}


def bench_packing(base: Path, gpus: int, runs: int, sleep: float) -> dict:
    ids = ",".join(str(i) for i in range(gpus))
    rows = "".join(f"p{i:03d},configs/tiny.json,{i},steps=1 sleep={sleep},\n" for i in range(runs))
    sp = SweepProject(base / "pack", {"remote": {"env": {"CUDA_VISIBLE_DEVICES": ids}}, "sweep": {"gpus_per_run": 1}},
                      "run_id,config,seed,overrides,notes\n" + rows)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "600", check=0)
    spans = []
    for i in range(runs):
        s = sp.run_status(f"p{i:03d}")
        spans.append((_t(s["started_at"]), _t(s["finished_at"]), len(s["cuda_visible_devices"].split(","))))
    makespan = max(e for _, e, _ in spans) - min(b for b, _, _ in spans)
    ideal = sum((e - b) * g for b, e, g in spans) / gpus
    peak = 0
    for b, _, _ in spans:
        peak = max(peak, sum(g for b2, e2, g in spans if b2 <= b < e2))
    return {"gpus": gpus, "runs": runs, "sleep_s": sleep, "makespan_s": round(makespan, 3),
            "ideal_s": round(ideal, 3), "efficiency": round(ideal / makespan, 3), "peak_gpus_busy": peak}


def fake_sweep(outputs: Path, n: int) -> None:
    """A finished sweep of ``n`` runs (every tenth failed, 200 HF-style log lines each)."""
    runs = []
    for i in range(n):
        rid = f"run{i:04d}"
        d = outputs / rid
        d.mkdir(parents=True)
        state = "failed" if i % 10 == 0 else "success"
        (d / "status.json").write_text(json.dumps({"id": rid, "state": state, "exit_code": 0,
                                                    "started_at": "2026-01-01T00:00:00Z",
                                                    "finished_at": "2026-01-01T00:01:00Z", "attempt": 1}))
        (d / "stdout.log").write_text("".join(f"{{'loss': {1 / (s + 1)}, 'epoch': {s}.0}}\n" for s in range(200)))
        runs.append({"run_id": rid, "out_dir": str(d), "launch": True})
    ctl = outputs / "_control" / "sweep"
    ctl.mkdir(parents=True)
    (ctl / "plan.json").write_text(json.dumps({"sweep_id": "bench", "runs": runs}))


def bench_status(base: Path, counts) -> list:
    from workflow.agent_client import AgentClient
    from workflow.sweep.control import sweep_status
    from workflow.transport.local import LocalTransport

    out = []
    for n in counts:
        outputs = base / f"status{n}" / "outputs"
        fake_sweep(outputs, n)
        agent = AgentClient(LocalTransport(), str(outputs))
        agent.install()
        sweep_status(agent)  # warm the page cache
        before = agent.calls
        t0 = time.monotonic()
        st = sweep_status(agent)
        secs = time.monotonic() - t0
        assert len(st.runs) == n
        out.append({"runs": n, "seconds": round(secs, 3), "round_trips": agent.calls - before})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--pack-runs", type=int, default=32)
    ap.add_argument("--sleep", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="podflow-bench-sweep-") as tmp:
        base = Path(tmp)
        gap = bench_gap(base, args.runs)
        print(f"gap between runs ({gap['runs']} runs, one at a time): mean {gap['gap_mean_s']}s, "
              f"median {gap['gap_median_s']}s, max {gap['gap_max_s']}s (target <= 0.5 s); "
              f"a run itself took {gap['run_mean_s']}s", flush=True)
        pack = bench_packing(base, args.gpus, args.pack_runs, args.sleep)
        print(f"packing on {pack['gpus']} fake GPUs, {pack['runs']} x 1-GPU runs sleeping {pack['sleep_s']}s: "
              f"makespan {pack['makespan_s']}s, ideal {pack['ideal_s']}s, efficiency {pack['efficiency']} "
              f"(target >= 0.9), peak GPUs busy {pack['peak_gpus_busy']}", flush=True)
        for row in bench_status(base, (10, 100, 1000)):
            print(f"sweep-status {row['runs']:>5} runs: {row['seconds']:.3f}s, {row['round_trips']} round trip(s)",
                  flush=True)
        # the runner's tmux servers go with their sweeps; nothing is left running
        print(json.dumps({"gap": gap, "packing": pack}))


if __name__ == "__main__":
    main()
