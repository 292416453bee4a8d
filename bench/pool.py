"""Pool bench (local provider with pod.count, real runners in tmux, sleeping jobs).

    .venv/bin/python bench/pool.py [--runs 24] [--sleep 2] [--status-runs 300] [--down-after 10]

1. makespan of RUNS sleep-bound runs on 1 pod vs 3 pods (sweep-start to the end of
   sweep-wait); the ratio is the speed-up (target >= 2.6);
2. sweep-status --json of 3 pods x N runs vs 1 pod x N runs (the pods are read at once;
   target <= 1.5x): ``local`` pods, then loopback sshd pods (users wfbench0-2; needs root);
3. a pod's death (two loopback sshd pods, users wfrecover0/1; p1 killed: its sshd and every
   process of its user) to its first run relaunched on p0 by sweep-wait, with
   pool.down_after_secs DOWN_AFTER (target <= DOWN_AFTER + 10 s). Needs root.

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


def bench_status_ssh(base: Path, runs: int, repeat: int = 5) -> dict:
    """``bench_status`` on three loopback sshd pods (users wfbench0-2): each pod's read is
    served on its own side of a kept connection, as on rented pods, where ``local`` pods'
    reads each start a python on the same two cores as the client. 1 pod = ``--pod p0``."""
    import os

    from sshd import ClientKeys, SshPod
    from test_balance import ssh_sweep_pool, wf

    os.chmod(base, 0o755)  # the pod users traverse it to their sshd's keys
    os.environ["HOME"] = str(base / "home")  # as in the tests: no ~/.ssh of this machine's user
    (base / "home").mkdir(exist_ok=True)
    keys = ClientKeys(base / "client-status")
    project = base / "status-ssh"
    (project / "configs").mkdir(parents=True)
    rows = "".join(f"s{i:04d},configs/tiny.json,{i},steps=1,\n" for i in range(min(runs, 999)))
    with ssh_sweep_pool([SshPod(keys, base, user=f"wfbench{i}") for i in range(3)], project):
        wf(project, "fsm-reset", "CHECKED_OUT", "--reason", "bench", check=0)
        for i in range(3):
            (project / "sweeps" / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n"
                                                          + rows.replace("s0", f"p{i}s0"))
            wf(project, "sweep-start", "--pod", f"p{i}", check=0, timeout=600)
            wf(project, "sweep-wait", "--pod", f"p{i}", "--timeout-secs", "1200", check=0, timeout=1300)
        out = {}
        for pods, select in ((1, ["--pod", "p0"]), (3, [])):
            times = []
            for _ in range(repeat):
                t0 = time.monotonic()
                doc = json.loads(wf(project, "sweep-status", "--json", *select).stdout)
                times.append(time.monotonic() - t0)
            out[f"pods{pods}_runs"] = len(doc["runs"])
            out[f"pods{pods}_s"] = round(statistics.median(times), 3)
        wf(project, "disconnect", check=0)  # the kept connections end with the pods
    out["ratio"] = round(out["pods3_s"] / out["pods1_s"], 2)
    return out


def bench_death(base: Path, down_after: float) -> dict:
    import os
    import subprocess

    from sshd import ClientKeys, SshPod
    from test_balance import WF, kill_pod, record_of, ssh_sweep_pool, wf

    os.chmod(base, 0o755)  # the pod users traverse it to their sshd's keys
    os.environ["HOME"] = str(base / "home")  # as in the tests: no ~/.ssh of this machine's user
    (base / "home").mkdir()
    keys = ClientKeys(base / "client")
    project = base / "death"
    (project / "configs").mkdir(parents=True)
    pods = [SshPod(keys, base, user=f"wfrecover{i}") for i in range(2)]
    with ssh_sweep_pool(pods, project, down_after_secs=down_after):
        (project / "sweeps" / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n"
                                                      "d0,configs/tiny.json,0,steps=1,\n"
                                                      "d1,configs/tiny.json,1,steps=30 sleep=1,\n")
        (project / ".podflow").mkdir(exist_ok=True)  # p0 a quick run, p1 a long one: nothing to balance
        (project / ".podflow" / "pool-sweep.json").write_text(json.dumps({"runs": {"d0": "p0", "d1": "p1"}}))
        wf(project, "fsm-reset", "CHECKED_OUT", "--reason", "bench", check=0)
        wf(project, "sweep-start", check=0)
        waiter = subprocess.Popen([WF, "sweep-wait", "--timeout-secs", "300"], cwd=project,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # p0 idle, p1 running its run: then p1 dies
            doc = json.loads(wf(project, "sweep-status", "--json").stdout)
            states = {r["id"]: r["state"] for r in doc["runs"]}
            if states.get("d0") == "success" and states.get("d1") == "running":
                break
            time.sleep(0.2)
        t0 = time.monotonic()
        kill_pod(pods[1])
        outputs = pods[0].home / "wft" / "outputs"
        relaunched = None
        while time.monotonic() < t0 + 120:
            status = outputs / "d1" / "status.json"
            if status.exists() and json.loads(status.read_text()).get("started_at"):
                relaunched = round(time.monotonic() - t0, 2)
                break
            time.sleep(0.1)
        out, _ = waiter.communicate(timeout=400)
    return {"down_after_secs": down_after, "death_to_first_relaunch_s": relaunched,
            "target_s": down_after + 10, "sweep_wait_exit": waiter.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--sleep", type=float, default=2.0)
    ap.add_argument("--status-runs", type=int, default=300)
    ap.add_argument("--down-after", type=float, default=10.0)
    ap.add_argument("--only", choices=("makespan", "status", "status-ssh", "death"), help="one part of the bench")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="podflow-bench-pool-"))
    parts = {"makespan": lambda: bench_makespan(base, args.runs, args.sleep),
             "status": lambda: bench_status(base, args.status_runs),
             "status-ssh": lambda: bench_status_ssh(base, args.status_runs),
             "death": lambda: bench_death(base, args.down_after)}
    try:
        result = {name: part() for name, part in parts.items() if args.only in (None, name)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
