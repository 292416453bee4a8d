"""The sweep on the pod for real (local provider: tmux, the podagent runner, python and
torchrun from .venv-torch): per-run states and files, restarts, literal overrides, a
runner killed with -9, GPU packing on fake GPUs, local_sync, status of 1000 runs in one
round trip, stop, and two sweep-starts at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from test_sweep_run_helpers import TORCH_VENV, WF, SweepProject, marked_pids, runs_by_id

pytestmark = pytest.mark.skipif(not (TORCH_VENV / "bin" / "torchrun").exists(),
                                reason="needs .venv-torch (bash scripts/setup)")


def _terminal(doc):
    return doc["state"] != "running"


def test_failed_and_timed_out_runs_then_restart_reruns_only_them(project):
    """torchrun + examples/train.py: ok, failing (torchrun exit 1), timing out (group killed)."""
    sp = SweepProject(project, {"sweep": {"launcher": "torchrun", "entrypoint": "train.py",
                                          "args": ["{config}", "--seed={seed}", "--out_dir={out_dir}"]}},
                      """\
                      run_id,config,seed,overrides,notes,timeout_secs
                      ok,configs/tiny.json,0,steps=10,,
                      bad,configs/tiny.json,1,fail=1,"fails, on purpose",
                      slow,configs/tiny.json,2,sleep_secs=2,,5
                      """)
    out = sp.wf("sweep-start", check=0)
    assert "3 run(s)" in out.stdout
    assert (sp.outputs / "_manifests" / "sweep-latest.csv").read_text().startswith("run_id,")
    stamped = [p.name for p in (sp.outputs / "_manifests").iterdir() if p.name != "sweep-latest.csv"]
    assert any(n.endswith(".csv") for n in stamped) and any(n.endswith(".json") for n in stamped)
    waited = sp.wf("sweep-wait", "--timeout-secs", "120")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert sp.fsm_state() == "SWEEP_COMPLETED"
    doc = sp.status()
    runs = runs_by_id(doc)
    assert {k: r["state"] for k, r in runs.items()} == {"ok": "success", "bad": "failed", "slow": "timed_out"}
    assert runs["bad"]["exit_code"] == 1  # torchrun's
    assert "fail" in runs["bad"]["log_tail"].lower()
    assert doc["counts"] == {"success": 1, "failed": 1, "timed_out": 1} and doc["percent"] == 100.0
    assert runs["ok"]["metrics"]["step"] == 10 and "loss" in runs["ok"]["metrics"]
    summary = json.loads((sp.outputs / "ok" / "summary.json").read_text())
    assert summary["ok"] is True and summary["exit_code"] == 0 and summary["duration_secs"] > 0
    assert "final_loss" in summary and summary["world_size"] == 1  # the script's keys kept
    slow = json.loads((sp.outputs / "slow" / "summary.json").read_text())
    assert slow["ok"] is False and slow["state"] == "timed_out"
    for d in ("ok", "bad", "slow"):
        assert {"stdout.log", "status.json", "summary.json", "command.sh"} <= set(os.listdir(sp.outputs / d))
    assert not marked_pids([sp.run_status(r)["nonce"] for r in runs])
    ok_before = sp.run_status("ok")

    out = sp.wf("sweep-start", check=0)
    assert "2 run(s), 1 skipped" in out.stdout
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    assert sp.run_status("ok") == ok_before
    assert sp.run_status("bad")["attempt"] == 2 and sp.run_status("slow")["attempt"] == 2
    assert sp.fsm_state() == "SWEEP_COMPLETED"


def test_overrides_reach_the_script_literally_and_dry_run_changes_nothing(project):
    nasty = '''"a=x y" "b=it's" c=1,2 "d=;echo pwned" 'e=$(touch /tmp/podflow-pwned)' `f`'''
    sp = SweepProject(project, {"remote": {"env": {"EXTRA": "from remote.env"}}},
                      "run_id,config,seed,overrides,notes\n"
                      "lit,configs/tiny.json,7," + '"' + nasty.replace('"', '""') + '"' + ",\n")
    dry = sp.wf("sweep-start", "--dry-run", check=0)
    assert "python job.py configs/tiny.json --seed=7" in dry.stdout
    assert "WF_RUN_ID=lit" in dry.stdout and "EXTRA='from remote.env'" in dry.stdout
    assert not (sp.outputs / "lit").exists() and sp.fsm_state() == "CHECKED_OUT"
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "60", check=0)
    args = json.loads((sp.outputs / "lit" / "args.json").read_text())
    assert args["argv"] == ["configs/tiny.json", "--seed=7", "a=x y", "b=it's", "c=1,2", "d=;echo pwned",
                            "e=$(touch /tmp/podflow-pwned)", "`f`"]
    assert not os.path.exists("/tmp/podflow-pwned")
    assert args["env"]["WF_RUN_ID"] == "lit" and args["env"]["WF_SEED"] == "7"
    assert args["env"]["WF_OUT_DIR"] == str(sp.outputs / "lit")
    assert args["env"]["PATH"].split(":")[0] == str(sp.repo / ".venv" / "bin")
    assert args["cwd"] == str(sp.repo / "examples")
    summary = json.loads((sp.outputs / "lit" / "summary.json").read_text())
    assert summary["duration_secs"] == "the script's own" and summary["script_key"] == 1 and summary["ok"] is True


def test_runner_killed_with_9_run_lost_then_restart_finishes_the_rest(project):
    sp = SweepProject(project, {}, """\
        run_id,config,seed,overrides,notes
        first,configs/tiny.json,0,,
        hang,configs/tiny.json,0,sleep_once=60,
        last,configs/tiny.json,0,,
        """)
    sp.wf("sweep-start", check=0)
    doc = sp.wait_for(lambda d: runs_by_id(d)["hang"]["state"] == "running", what="hang running")
    runner_pid = doc["runner"]["pid"]
    hang_nonce = sp.run_status("hang")["nonce"]
    assert marked_pids([hang_nonce])
    first_before = sp.run_status("first")
    os.kill(runner_pid, signal.SIGKILL)
    doc = sp.wait_for(lambda d: d["state"] != "running", timeout=20, what="runner dead")
    runs = runs_by_id(doc)
    assert doc["state"] == "runner_dead" and doc["fsm_state"] == "SWEEP_RUNNING"
    assert runs["hang"]["state"] == "lost" and runs["first"]["state"] == "success"
    assert runs["last"]["state"] == "pending"
    deadline = time.monotonic() + 5
    while marked_pids([hang_nonce]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not marked_pids([hang_nonce]), "the lost run's processes were left behind"

    out = sp.wf("sweep-start", check=0)  # SWEEP_RUNNING whose runner is dead: allowed
    assert "2 run(s), 1 skipped" in out.stdout
    sp.wf("sweep-wait", "--timeout-secs", "60", check=0)
    assert sp.run_status("first") == first_before
    assert sp.run_status("hang")["state"] == "success" and sp.run_status("hang")["attempt"] == 2
    assert sp.run_status("last")["state"] == "success"
    assert sp.fsm_state() == "SWEEP_COMPLETED"
    # A live runner is not "dead": a sweep-start while one runs is refused.
    sp.write_csv("run_id,config,seed,overrides,notes\nzz,configs/tiny.json,0,sleep=120 steps=1,\n")
    sp.wf("sweep-start", check=0)
    refused = sp.wf("sweep-start")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    sp.wf("sweep-stop", check=0)


def test_four_fake_gpus_run_four_one_gpu_runs_at_once(project):
    rows = "".join(f"g{i},configs/tiny.json,{i},sleep=0.6 steps=2,\n" for i in range(6))
    sp = SweepProject(project, {"remote": {"env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}},
                                "sweep": {"gpus_per_run": 1}},
                      "run_id,config,seed,overrides,notes,gpus\n" + rows.replace(",\n", ",,\n")
                      + "wide,configs/tiny.json,9,sleep=0.3 steps=2,,3\n")
    dry = sp.wf("sweep-start", "--dry-run", check=0)
    assert "GPUs: 0, 1, 2, 3" in dry.stdout and "--nproc_per_node" not in dry.stdout
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "60", check=0)
    spans = []
    for rid in [f"g{i}" for i in range(6)] + ["wide"]:
        st = sp.run_status(rid)
        args = json.loads((sp.outputs / rid / "args.json").read_text())
        assert args["cvd"] == st["cuda_visible_devices"]
        from datetime import datetime

        t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()  # noqa: E731
        spans.append((rid, t(st["started_at"]), t(st["finished_at"]), set(args["cvd"].split(","))))
    assert len(spans[-1][3]) == 3
    first4 = spans[:4]
    assert max(s[1] for s in first4) < min(s[2] for s in first4), "the first four 1-GPU runs did not overlap"
    assert set().union(*(s[3] for s in first4)) == {"0", "1", "2", "3"}
    events = sorted([(s[1], 1, s) for s in spans] + [(s[2], 0, s) for s in spans], key=lambda e: (e[0], e[1]))
    busy = set()
    for _, start, s in events:
        if start:
            assert not (busy & s[3]), f"{s[0]} got GPUs {s[3]} already in use ({busy})"
            busy |= s[3]
            assert len(busy) <= 4
        else:
            busy -= s[3]


def _spans(sp, run_ids):
    from datetime import datetime

    t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()  # noqa: E731
    out = []
    for rid in run_ids:
        st = sp.run_status(rid)
        assert st["state"] == "success", st
        out.append((rid, t(st["started_at"]), t(st["finished_at"]), st["cuda_visible_devices"]))
    return out


def test_two_sweeps_sharing_a_pod_never_share_a_gpu(project, tmp_path):
    """Two projects (two users' outputs dirs) on one machine with the same 2 GPUs: the
    pod-wide leases keep each GPU to one run at a time across both sweeps."""
    leases = tmp_path / "leases"
    cfg = {"remote": {"env": {"CUDA_VISIBLE_DEVICES": "0,1", "PODFLOW_GPU_LEASE_DIR": str(leases)}},
           "sweep": {"gpus_per_run": 1}}
    sweeps = []
    for name, root in (("a", project), ("b", tmp_path / "other-user")):
        rows = "".join(f"{name}{i},configs/tiny.json,{i},sleep=0.4 steps=2,\n" for i in range(3))
        sweeps.append(SweepProject(root, cfg, "run_id,config,seed,overrides,notes\n" + rows))
    for sp in sweeps:
        sp.wf("sweep-start", check=0)
    for sp in sweeps:
        sp.wf("sweep-wait", "--timeout-secs", "90", check=0)
    spans = _spans(sweeps[0], ["a0", "a1", "a2"]) + _spans(sweeps[1], ["b0", "b1", "b2"])
    for gpu in ("0", "1"):
        on_gpu = sorted((s for s in spans if s[3] == gpu), key=lambda s: s[1])
        for prev, cur in zip(on_gpu, on_gpu[1:]):
            assert cur[1] >= prev[2], f"{cur[0]} started on GPU {gpu} while {prev[0]} held it"
    assert {s[3] for s in spans} == {"0", "1"}
    assert not any(leases.glob("gpu-*.lock")) or all(p.read_text() == "" for p in leases.glob("gpu-*.lock"))


def test_local_sync_mirrors_into_the_durable_dir(project, tmp_path):
    local_root = tmp_path / "fast-disk"
    sp = SweepProject(project, {"sweep": {"out_mode": "local_sync", "local_root": str(local_root),
                                          "sync_interval_secs": 0.3}},
                      "run_id,config,seed,overrides,notes\nls,configs/tiny.json,0,steps=6 sleep=0.3,\n")
    sp.wf("sweep-start", check=0)
    durable = sp.outputs / "ls"
    deadline = time.monotonic() + 30
    seen_early = False
    while time.monotonic() < deadline:
        if ((durable / "status.json").exists() and sp.run_status("ls")["state"] == "running"
                and (durable / "file1.txt").exists()):
            seen_early = True
            break
        time.sleep(0.1)
    assert seen_early, "nothing was mirrored while the run was going"
    sp.wf("sweep-wait", "--timeout-secs", "60", check=0)
    assert (local_root / "ls" / "file5.txt").exists()
    for name in ("args.json", "file5.txt", "summary.json", "stdout.log", "status.json"):
        assert (durable / name).exists(), name
    assert json.loads((durable / "args.json").read_text())["env"]["WF_OUT_DIR"] == str(local_root / "ls")
    summary = json.loads((durable / "summary.json").read_text())
    assert summary["script_key"] == 1 and summary["ok"] is True
    assert not [t for t in threading.enumerate() if t.name == "sync"]


def test_status_of_1000_runs_in_one_round_trip(project):
    from workflow.agent_client import AgentClient
    from workflow.sweep.control import sweep_status
    from workflow.transport.local import LocalTransport

    outputs = project / "outputs"
    runs = []
    for i in range(1000):
        rid = f"run{i:04d}"
        d = outputs / rid
        d.mkdir(parents=True)
        state = "failed" if i % 10 == 0 else "success"
        (d / "status.json").write_text(json.dumps({"id": rid, "state": state, "exit_code": 0 if state == "success" else 2,
                                                    "started_at": "2026-01-01T00:00:00Z",
                                                    "finished_at": "2026-01-01T00:01:00Z", "attempt": 1}))
        (d / "stdout.log").write_text("".join(f"{{'loss': {1 / (s + 1)}, 'epoch': {s}.0}}\n" for s in range(50))
                                      + "step=49 lr=3e-4 note=x\n")
        runs.append({"run_id": rid, "out_dir": str(d), "launch": True})
    ctl = outputs / "_control" / "sweep"
    ctl.mkdir(parents=True)
    (ctl / "plan.json").write_text(json.dumps({"sweep_id": "s1", "runs": runs}))
    agent = AgentClient(LocalTransport(), str(outputs))
    agent.install()
    calls = agent.calls
    t0 = time.monotonic()
    st = sweep_status(agent)
    elapsed = time.monotonic() - t0
    assert agent.calls - calls == 1
    assert len(st.runs) == 1000 and st.counts == {"success": 900, "failed": 100} and st.percent == 100.0
    r = st.runs[1]
    assert r.metrics == {"loss": 0.02, "epoch": 49.0, "step": 49, "lr": 3e-4}
    assert r.duration_secs == 60.0 and r.log_tail is None
    assert st.runs[0].state == "failed" and "step=49" in st.runs[0].log_tail
    assert elapsed < 10


def test_sweep_stop_cancels_runs_and_leaves_no_process(project):
    sleeper = project / "sleeper.py"
    sp = SweepProject(project, {"sweep": {"launcher": "torchrun", "entrypoint": "sleeper.py",
                                          "nproc_per_node": 2, "args": []}},
                      "run_id,config,seed,overrides,notes\nst1,configs/tiny.json,0,,\nst2,configs/tiny.json,0,,\n")
    (sp.repo / "examples" / "sleeper.py").write_text(
        "import os, time\nprint('rank', os.environ.get('RANK'), flush=True)\ntime.sleep(120)\n")
    del sleeper
    sp.wf("sweep-start", check=0)
    sp.wait_for(lambda d: runs_by_id(d)["st1"]["state"] == "running"
                and (sp.outputs / "st1" / "stdout.log").read_text().count("rank") == 2, timeout=60,
                what="two torchrun workers up")
    nonce = sp.run_status("st1")["nonce"]
    assert len(marked_pids([nonce])) >= 3  # bash->torchrun + 2 workers
    runner_nonce = json.loads((sp.outputs / "_control" / "sweep" / "runner" / "status.json").read_text())["nonce"]
    out = sp.wf("sweep-stop", check=0)
    assert "1 run(s) cancelled" in out.stdout
    assert sp.run_status("st1")["state"] == "cancelled"
    assert not (sp.outputs / "st2" / "status.json").exists()
    assert not marked_pids([nonce, runner_nonce])
    assert sp.fsm_state() == "CHECKED_OUT"
    assert sp.status()["state"] == "cancelled"
    assert sp.wf("sweep-stop").returncode == 3


def test_two_sweep_starts_at_once_exactly_one_starts(project):
    sp = SweepProject(project, {}, "run_id,config,seed,overrides,notes\nx,configs/tiny.json,0,sleep=2 steps=1,\n")
    env = dict(os.environ)
    procs = [subprocess.Popen([WF, "sweep-start"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    codes = sorted(p.wait(60) for p in procs)
    assert codes == [0, 3], [p.communicate() for p in procs]
    sp.wf("sweep-wait", "--timeout-secs", "30", check=0)
    assert sp.run_status("x")["attempt"] == 1


def test_retries_on_failure_stop_and_bad_input(project):
    sp = SweepProject(project, {"sweep": {"max_retries": 1, "on_failure": "stop"}}, """\
        run_id,config,seed,overrides,notes
        a,configs/tiny.json,0,fail=4,
        b,configs/tiny.json,0,,
        """)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "60", check=1)
    assert sp.run_status("a")["attempt"] == 2 and sp.run_status("a")["exit_code"] == 4
    assert not (sp.outputs / "b").exists()  # on_failure: stop
    assert sp.fsm_state() == "SWEEP_COMPLETED"
    # --retry-failed: only rows that ran and did not succeed (b never ran).
    dry = sp.wf("sweep-start", "--retry-failed", "--dry-run", check=0)
    assert "a  [run]" in dry.stdout and "b  [skip (never ran)]" in dry.stdout
    # A config missing on the pod: exit 2 with the line; a bad CSV: exit 2 before the pod.
    sp.write_csv("run_id,config,seed,overrides,notes\nok,configs/tiny.json,0,,\nnope,configs/missing.json,0,,\n")
    bad = sp.wf("sweep-start")
    assert bad.returncode == 2 and "line 3: run nope: config configs/missing.json" in bad.stderr
    sp.write_csv("run_id,config,seed,overrides,notes\n../x,configs/tiny.json,0,,\n")
    bad = sp.wf("sweep-start")
    assert bad.returncode == 2 and "sweep.csv:2: invalid run_id '../x'" in bad.stderr
    assert sp.fsm_state() == "SWEEP_COMPLETED"


def test_runs_killed_by_a_signal_keep_their_log_exit_status_and_signal(project):
    """A torchrun worker killed by SIGABRT (torchrun exits 1 and reports the rank) and a
    launcher killed by it: status.json, sweep-status and --json say which and how."""
    sp = SweepProject(project, {"sweep": {"launcher": "torchrun", "nproc_per_node": 2}}, """\
        run_id,config,seed,overrides,notes
        worker,configs/tiny.json,0,steps=3 abort_rank=1,
        """)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    doc = sp.run_status("worker")
    assert doc["state"] == "failed" and doc["exit_code"] == 1 and "signal" not in doc
    assert doc["worker_failures"][0] == {"rank": 1, "exitcode": -6, "signal": 6, "signal_name": "SIGABRT",
                                         "root_cause": True}, doc["worker_failures"]
    log = (sp.outputs / "worker" / "stdout.log").read_text()
    assert '"step": 0' in log and "rank 1 aborting on purpose" in log and "Signal 6 (SIGABRT)" in log
    text = sp.wf("sweep-status", check=0).stdout
    assert "--- worker: failed: exit code 1; rank 1 killed by SIGABRT (root cause)" in text, text
    assert "Signal 6 (SIGABRT) received by PID" in text
    run = sp.status()["runs"][0]
    assert run["signal"] is None and run["exit_code"] == 1
    assert run["worker_failures"][0]["signal_name"] == "SIGABRT" and run["worker_failures"][0]["rank"] == 1

    sp.write_config({"sweep": {"launcher": "python"}})
    sp.write_csv("run_id,config,seed,overrides,notes\nlauncher,configs/tiny.json,0,abort_rank=0,\n")
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "60", check=1)
    doc = sp.run_status("launcher")
    assert (doc["state"], doc["exit_code"], doc["signal"], doc["signal_name"]) == ("failed", 134, 6, "SIGABRT")
    assert doc["error"] == "killed by SIGABRT" and "worker_failures" not in doc
    text = sp.wf("sweep-status", check=0).stdout
    assert "--- launcher: failed: killed by SIGABRT; exit code 134" in text, text
    assert "    rank 0 aborting on purpose" in text
    run = sp.status()["runs"][0]
    assert run["signal"] == "SIGABRT" and run["exit_code"] == 134 and run["worker_failures"] == []
    assert "rank 0 aborting on purpose" in run["log_tail"]


def test_gpus_counted_by_torch_when_there_is_no_nvidia_smi(tmp_path, monkeypatch):
    from workflow.agent import gpus

    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'noise from an import'\necho 3\n")
    fake_python.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setattr(gpus, "DEVICE_NODES", ())  # no GPU device node: torch is not even asked
    assert gpus.detect_gpus({}, str(fake_python)) == ([], "none")
    (tmp_path / "nvidia0").touch()
    monkeypatch.setattr(gpus, "DEVICE_NODES", (str(tmp_path / "nvidia[0-9]*"),))
    assert gpus.detect_gpus({}, str(fake_python)) == (["0", "1", "2"], "torch")
    assert gpus.detect_gpus({}, str(tmp_path / "missing")) == ([], "none")
    # torch's answer is kept (importing torch takes seconds) until the venv changes
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    kept, cache = venv / "bin" / "python", tmp_path / "ctl" / "torch-gpus.json"
    (tmp_path / "ctl").mkdir()
    kept.write_text("#!/bin/sh\necho 2\n")
    kept.chmod(0o755)
    assert gpus.detect_gpus({}, str(kept), cache=str(cache)) == (["0", "1"], "torch")
    st = os.lstat(kept)
    kept.write_text("#!/bin/sh\nexit 1\n")  # would say none, were it asked
    os.utime(kept, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert gpus.detect_gpus({}, str(kept), cache=str(cache)) == (["0", "1"], "torch")  # not asked: kept
    (venv / "lib" / "python3.11" / "site-packages" / "torch").mkdir()  # a package added: asked again
    assert gpus.detect_gpus({}, str(kept), cache=str(cache)) == ([], "none")
    assert gpus.detect_gpus({"CUDA_VISIBLE_DEVICES": "4,5"}, str(fake_python)) == (["4", "5"], "remote.env CUDA_VISIBLE_DEVICES")
