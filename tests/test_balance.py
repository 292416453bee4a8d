"""Balance and recovery of a pool's sweep (SPEC §8, ``workflow/sweep/balance.py``).

Pods are real: ``local`` pools (each pod its own directories) and loopback sshds, one
unix user each. Runs are tiny sleep-bound jobs; nothing here asserts a duration.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from test_pool import pool_sweep  # noqa: F401 - fixture
from test_sweep_run_helpers import WF
from workflow.errors import ConnectionFailed, RemoteCommandFailed
from workflow import pool
from workflow.sweep import balance, pooled
from workflow.sweep.control import SweepStatus


def record(sp) -> dict:
    return json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())


def run_dirs(outputs, run_id):
    """The pods' outputs dirs that have a status.json for ``run_id``."""
    return [i for i, out in enumerate(outputs) if (Path(out) / run_id / "status.json").exists()]


# ---------------------------------------------------------------- health: only a death is a death


def test_down_needs_consecutive_failed_reads_for_down_after_secs():
    now = [0.0]
    health = balance.Health(10, clock=lambda: now[0])
    p = pool.Pod("p1", 1)
    lost = pool.PodResult(p, error=ConnectionFailed("cannot reach p1"))
    quiet = lambda pod: None  # noqa: E731 - the provider says nothing
    health.observe(lost, quiet)
    now[0] = 9.0
    health.observe(lost, quiet)
    assert health.down("p1") is None  # 9 s of failures < 10 s
    now[0] = 9.5
    health.observe(pool.PodResult(p, value="a slow answer, but an answer"), quiet)
    now[0] = 12.0
    health.observe(lost, quiet)
    assert health.down("p1") is None  # the streak started again at 12 s
    health.observe(pool.PodResult(p, error=RemoteCommandFailed("x", 1, "")), quiet)
    assert health.down("p1") is None  # it answered (with an error): it is not unreachable
    now[0] = 13.0
    health.observe(lost, quiet)
    now[0] = 23.5
    health.observe(lost, quiet)
    assert "unreachable for 10s" in health.down("p1")
    health.observe(pool.PodResult(p, value="back"), quiet)
    assert health.down("p1") is None
    health.observe(lost, lambda pod: "the provider says it is stopped")  # the provider: at once
    assert health.down("p1") == "the provider says it is stopped"


def _st(state, fsm, *runs, withdrawn=()):
    return SweepStatus.from_doc({"state": state, "fsm_state": fsm, "counts": {}, "percent": 0,
                                 "runs": [{"id": i, "state": s} for i, s in runs], "withdrawn": list(withdrawn)})


def test_plan_moves_idle_pods_take_half_a_queue_and_a_down_pods_unfinished_runs():
    rec = pooled.Placement(runs={"a": "p0", "b": "p0", "c": "p0", "d": "p0", "e": "p1", "f": "p2", "g": "p2"},
                           ended={"f": "success"})
    up = {"p0": _st("running", "SWEEP_RUNNING", ("a", "running"), ("b", "pending"), ("c", "pending"), ("d", "pending")),
          "p1": _st("completed", "SWEEP_COMPLETED", ("e", "success"))}
    assert balance.plan_moves(up, [], rec) == [balance.Move(("c", "d"), "p1", "p0", "balance")]
    # p2 is down: its run not known to have ended goes first, with no pod to withdraw it from
    assert balance.plan_moves(up, ["p2"], rec) == [balance.Move(("g",), "p1", None, "recover")]
    assert balance.plan_moves(up, ["p2"], rec, recover=False) == [balance.Move(("c", "d"), "p1", "p0", "balance")]
    # a run a pod withdrew that no pod started is placed again; a busy pool moves nothing
    up["p1"] = _st("completed", "SWEEP_COMPLETED", ("e", "success"), withdrawn=("x",))
    assert balance.plan_moves(up, [], pooled.Placement(runs={**rec.runs, "x": "p1"})) == [
        balance.Move(("x",), "p1", None, "stranded")]
    up["p1"] = _st("running", "SWEEP_RUNNING", ("e", "running"))
    assert balance.plan_moves(up, ["p2"], rec) == []


# ---------------------------------------------------------------- balance, for real, under a race


def test_idle_pods_take_pending_runs_and_two_clients_never_place_one_run_twice(pool_sweep):
    sp = pool_sweep
    rows = [f"slow{i},configs/tiny.json,{i},steps=2 sleep=1.5," for i in range(6)]
    rows += [f"quick{i},configs/tiny.json,{i},steps=1," for i in range(3)]
    sp.write_csv("run_id,config,seed,overrides,notes\n" + "\n".join(rows) + "\n")
    # placed as an earlier sweep left them: the slow runs on p0, the quick ones on p1
    first = {**{f"slow{i}": "p0" for i in range(6)}, **{f"quick{i}": "p1" for i in range(3)}}
    (sp.root / ".podflow").mkdir(exist_ok=True)
    (sp.root / ".podflow" / "pool-sweep.json").write_text(json.dumps({"runs": first}))
    sp.wf("sweep-start", check=0)
    assert record(sp)["runs"] == first
    # two clients wait at once: each balances; the pods' withdraw keeps a run on one pod
    env = dict(os.environ, OMP_NUM_THREADS="1")
    clients = [subprocess.Popen([WF, "sweep-wait", "--timeout-secs", "150"], cwd=sp.root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [c.communicate(timeout=200) for c in clients]
    for c, (out, err) in zip(clients, outs):
        assert c.returncode == 0, out + err
    said = "".join(out for out, _ in outs)
    assert " took " in said, said
    final = record(sp)["runs"]
    moved = sorted(r for r in final if final[r] != first[r])
    assert moved and all(r.startswith("slow") for r in moved), (first, final)
    doc = json.loads(sp.wf("sweep-status", "--json", check=0).stdout)
    assert doc["counts"] == {"success": 9}
    assert all(r["pod"] == final[r["id"]] for r in doc["runs"])
    for run_id in final:  # each run ran once, on the pod the record names
        holders = run_dirs(sp.outputs_of, run_id)
        assert holders == [int(final[run_id][1])], (run_id, holders)
        st = json.loads((sp.outputs_of[holders[0]] / run_id / "status.json").read_text())
        assert st["attempt"] == 1 and st["state"] == "success"
