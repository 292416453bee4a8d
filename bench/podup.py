"""Bench: time from "sshd accepts logins" to ``wf pod-up`` returning (target <= 1 s).

A fake provider API (tests/fakes) rents a pod that is a real loopback sshd with staged
readiness: the API says running at 0.1 s, the port opens at 0.3 s, the key is authorized
(logins work) at 0.6 s. ``wf pod-up`` runs as a subprocess of the real CLI; the figure is
its exit time minus the moment logins started to work. Seed 001's scripts wait a fixed
15 s after the port opens instead.

    .venv/bin/python bench/podup.py [--provider vastai|runpod|lium] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from fakes.common import Timeline  # noqa: E402
from fakes.harness import CloudProject  # noqa: E402
from fakes.lium import LiumExecutor  # noqa: E402
from fakes.runpod import GpuType  # noqa: E402
from fakes.vast import VastOffer  # noqa: E402
from sshd import ClientKeys  # noqa: E402


def one(kind: str, base: Path, keys, i: int) -> dict:
    tl = Timeline(running=0.1, port=0.3, auth=0.6)
    item = {"vastai": lambda: VastOffer(1, timeline=tl), "runpod": lambda: GpuType("NVIDIA RTX A4000", "RTX A4000", timeline=tl),
            "lium": lambda: LiumExecutor(timeline=tl)}[kind]()
    with CloudProject(kind, base / f"proj-{kind}-{i}", keys, base, [item]) as cp:
        t0 = time.time()
        r = cp.wf("pod-up")
        t1 = time.time()
        if r.returncode != 0:
            raise SystemExit(f"pod-up failed ({r.returncode}):\n{r.stderr}")
        pod = cp.live_pods()[0]
        logins = pod.fake.logins_at
        cp.wf("pod-down", "--destroy", "--force")
        return {"total": t1 - t0, "after_logins": t1 - logins}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", action="append", choices=["vastai", "runpod", "lium"])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    kinds = args.provider or ["vastai", "runpod", "lium"]
    base = Path(tempfile.mkdtemp(prefix="podflow-bench-"))
    os.chmod(base, 0o755)
    keys = ClientKeys(base / "client")
    try:
        for kind in kinds:
            res = [one(kind, base, keys, i) for i in range(args.runs)]
            after = [r["after_logins"] for r in res]
            total = [r["total"] for r in res]
            verdict = "ok" if max(after) <= 1.0 else "OVER TARGET"
            print(f"{kind:7s} sshd accepts logins -> pod-up returns: median {statistics.median(after):.3f} s, "
                  f"max {max(after):.3f} s (target <= 1 s: {verdict}); whole pod-up {statistics.median(total):.2f} s "
                  f"(pod ready at 0.6 s after rent)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
