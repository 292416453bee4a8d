"""Multi-node bench (local pods on this machine, real runners in tmux, examples/train.py).

    .venv/bin/python bench/multinode.py [--repeat 3] [--steps 20]

1. launch skew: first node started -> last node started (the nodes' ``started_at`` in
   their status.json) of a 2-node run (target <= 1 s);
2. end-to-end overhead: sweep-start to the end of sweep-wait of the same training (world
   size 2, gloo) as one run on 2 pods (nproc_per_node 1 each) and on 1 pod (nproc_per_node
   2); the difference is what spanning nodes costs (target <= 2 s).

Local pods share this machine's cores, so the figures hold the engine's work (placement,
the rendezvous port and probe, two runners), not a network's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_sweep_run_helpers import SweepProject  # noqa: E402


def _project(base: Path, name: str, pods: int, nodes: int, nproc: int, steps: int) -> SweepProject:
    sp = SweepProject(base / name, {"pod": {"provider": "local", "count": pods},
                                    "sweep": {"launcher": "torchrun", "entrypoint": "train.py",
                                              "nproc_per_node": nproc,
                                              "args": ["{config}", "--seed={seed}", "--out_dir={out_dir}"]}},
                      f"run_id,config,seed,overrides,notes,nodes\nb,configs/tiny.json,0,steps={steps},,{nodes}\n")
    for i in range(1, pods):
        shutil.copytree(sp.repo, sp.pod / f"repo-p{i}", symlinks=True)
    return sp


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def once(base: Path, name: str, pods: int, nodes: int, nproc: int, steps: int) -> dict:
    sp = _project(base, name, pods, nodes, nproc, steps)
    t0 = time.monotonic()
    sp.wf("sweep-start", check=0, timeout=600)
    sp.wf("sweep-wait", "--timeout-secs", "600", check=0, timeout=700)
    wall = time.monotonic() - t0
    outs = [sp.pod / "outputs"] + [sp.pod / f"outputs-p{i}" for i in range(1, pods)]
    starts = [_at(json.loads((o / "b" / "status.json").read_text())["started_at"]) for o in outs[:nodes]]
    train = json.loads((outs[0] / "b" / "summary.json").read_text())["train_secs"]
    return {"wall_s": wall, "skew_s": max(starts) - min(starts), "train_s": train}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="podflow-bench-mn-"))
    two, one = [], []
    try:
        for i in range(args.repeat):
            two.append(once(base, f"two{i}", 2, 2, 1, args.steps))
            one.append(once(base, f"one{i}", 1, 1, 2, args.steps))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = lambda rows, key: round(statistics.median(r[key] for r in rows), 3)  # noqa: E731
    out = {"repeat": args.repeat, "steps": args.steps,
           "skew_s": {"median": med(two, "skew_s"), "max": round(max(r["skew_s"] for r in two), 3)},
           "two_nodes_wall_s": med(two, "wall_s"), "one_node_wall_s": med(one, "wall_s"),
           "overhead_s": round(med(two, "wall_s") - med(one, "wall_s"), 3),
           "train_s": {"two_nodes": med(two, "train_s"), "one_node": med(one, "train_s")}}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
