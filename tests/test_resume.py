"""Resume, not restart (SPEC §8): a run launched again starts from its freshest earlier
files, with ``WF_ATTEMPT``/``WF_RESUME`` and ``sweep.resume_args``; ``sweep-wait``
mirrors running runs into local artifacts meanwhile.

Real parts: the local provider's runner (tmux, podagent) with the test job, local pools,
and a pool of two loopback sshd pods running ``examples/train.py`` under torchrun on CPU,
one of them killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_pool import pool_sweep  # noqa: F401 - fixture
from test_sweep_run_helpers import TORCH_VENV, WF, SweepProject

pytestmark = pytest.mark.skipif(not (TORCH_VENV / "bin" / "torchrun").exists(),
                                reason="needs .venv-torch (bash scripts/setup)")


def _args(sp, run_id):
    return json.loads((sp.outputs / run_id / "args.json").read_text())


def test_a_run_launched_again_gets_its_attempt_resume_args_and_earlier_files(project):
    sp = SweepProject(project, {"sweep": {"resume_args": ["--resume", "--from={out_dir}"]}}, """\
        run_id,config,seed,overrides,notes
        bad,configs/tiny.json,0,fail=3,
        ok,configs/tiny.json,0,,
        """)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    first = _args(sp, "bad")
    assert first["env"]["WF_ATTEMPT"] == "1" and "WF_RESUME" not in first["env"]
    assert "--resume" not in first["argv"]
    assert _args(sp, "ok")["env"]["WF_ATTEMPT"] == "1"

    # retried on the same pod: its own earlier files (file0.txt, ...) are there
    dry = sp.wf("sweep-start", "--retry-failed", "--dry-run", check=0).stdout
    assert f"--resume '--from={sp.outputs / 'bad'}'" in dry or f"--resume --from={sp.outputs / 'bad'}" in dry, dry
    assert "WF_ATTEMPT=2" in dry and "WF_RESUME=1" in dry and "resumes (attempt 2) from its earlier files" in dry
    planned = {r["run_id"]: r for r in json.loads(
        sp.wf("sweep-start", "--retry-failed", "--dry-run", "--json", check=0).stdout)["runs"]}
    assert planned["bad"]["launch"] and planned["bad"]["attempt"] == 2 and planned["bad"]["resume_from"] == "pod"
    assert planned["bad"]["argv"][-1] == f"--from={sp.outputs / 'bad'}" and planned["bad"]["env"]["WF_RESUME"] == "1"
    assert not planned["ok"]["launch"]
    sp.wf("sweep-start", "--retry-failed", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    second = _args(sp, "bad")
    assert second["argv"][-2:] == ["--resume", f"--from={sp.outputs / 'bad'}"]  # after the overrides
    assert second["env"]["WF_ATTEMPT"] == "2" and second["env"]["WF_RESUME"] == "1"
    assert sp.run_status("bad")["attempt"] == 2 and sp.run_status("bad")["resumed"] is True
    assert "WF_RESUME=1" in (sp.outputs / "bad" / "command.sh").read_text()

    # the pod lost the run's dir (a new pod, a wiped disk): the local copy goes up first;
    # --retry-failed retries it too (its local copy says it failed)
    sp.wf("fetch-run", "bad", check=0)
    shutil.rmtree(sp.outputs / "bad")
    dry = sp.wf("sweep-start", "--dry-run", check=0).stdout
    assert "resumes (attempt 3) from the local copy" in dry, dry
    planned = {r["run_id"]: r for r in json.loads(
        sp.wf("sweep-start", "--retry-failed", "--dry-run", "--json", check=0).stdout)["runs"]}
    assert planned["bad"]["launch"] and planned["bad"]["resume_from"] == "local", planned["bad"]
    assert not planned["ok"]["launch"]
    sp.wf("sweep-start", "--retry-failed", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    third = _args(sp, "bad")
    assert third["env"]["WF_ATTEMPT"] == "3" and third["env"]["WF_RESUME"] == "1"
    assert (sp.outputs / "bad" / "file1.txt").exists()
    assert sp.run_status("bad")["attempt"] == 3
    assert json.loads((sp.outputs / "ok" / "status.json").read_text())["attempt"] == 1  # ok: never again

    # a finished run's local copy is its results, never a run in progress: a new pod runs it afresh
    sp.wf("fetch-run", "ok", check=0)
    shutil.rmtree(sp.outputs / "ok")
    planned = {r["run_id"]: r for r in json.loads(sp.wf("sweep-start", "--dry-run", "--json", check=0).stdout)["runs"]}
    assert planned["ok"]["launch"] and planned["ok"]["attempt"] == 1 and planned["ok"]["resume_from"] is None
    assert "WF_RESUME" not in planned["ok"]["env"]


def test_local_sync_script_dir_lost_is_filled_from_the_durable_copy(project, tmp_path):
    local_root = tmp_path / "fast-disk"
    sp = SweepProject(project, {"sweep": {"out_mode": "local_sync", "local_root": str(local_root)}},
                      "run_id,config,seed,overrides,notes\nls,configs/tiny.json,0,fail=3,\n")
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    (sp.outputs / "ls" / "ckpt.txt").write_text("step 7\n")  # in the durable copy only
    shutil.rmtree(local_root / "ls")  # the pod's local disk was lost
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    assert (local_root / "ls" / "ckpt.txt").read_text() == "step 7\n"
    assert not (local_root / "ls" / "status.json").exists()  # the engine's files stay in the durable dir
    env = json.loads((local_root / "ls" / "args.json").read_text())["env"]
    assert env["WF_ATTEMPT"] == "2" and env["WF_RESUME"] == "1"


def test_the_mirror_copies_running_runs_and_the_next_fetch_drops_its_temp_files(project, tmp_path):
    from workflow.agent_client import AgentClient
    from workflow.sweep.control import RunState, SweepStatus
    from workflow.sweep.fetch import Fetcher
    from workflow.sweep.mirror import Mirror
    from workflow.transport.local import LocalTransport

    outputs, artifacts = tmp_path / "outputs", project / "artifacts"
    (outputs / "r" / "ckpt").mkdir(parents=True)
    (outputs / "r" / "metrics.jsonl").write_text('{"step": 1}\n')
    (outputs / "r" / "ckpt" / "model.pt.tmp").write_bytes(b"half written")
    (outputs / "r" / ".status.lock").write_text("")
    running = SweepStatus(state="running", counts={"running": 1}, percent=0.0,
                          runs=(RunState(id="r", state="running", dir=str(outputs / "r")),
                                RunState(id="done", state="success", dir=str(outputs / "done"))))
    mirror = Mirror(LocalTransport(), artifacts, 0.01)
    assert mirror.tick(running)
    mirror.close()
    assert (artifacts / "r" / "ckpt" / "model.pt.tmp").read_bytes() == b"half written"
    assert not (artifacts / "r" / ".status.lock").exists() and not (artifacts / "done").exists()

    (outputs / "r" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    os.replace(outputs / "r" / "ckpt" / "model.pt.tmp", outputs / "r" / "ckpt" / "model.pt")
    time.sleep(0.02)
    assert mirror.tick(running)
    mirror.close()
    assert mirror.done == 2 and mirror.errors == 0
    assert (artifacts / "r" / "metrics.jsonl").read_text().count("step") == 2
    assert (artifacts / "r" / "ckpt" / "model.pt").exists()

    fetched = Fetcher(LocalTransport(), AgentClient(LocalTransport(), str(outputs)), str(outputs),
                      artifacts).fetch_run("r").runs[0]
    assert fetched.removed_transient == ("ckpt/model.pt.tmp",) and not fetched.local_only
    assert not (artifacts / "r" / "ckpt" / "model.pt.tmp").exists()


def test_a_failing_mirror_is_logged_and_never_breaks_the_wait(project):
    gate = project / "go"  # the run goes on once the failed mirror was told, whatever the machine's load
    sp = SweepProject(project, {"sweep": {"mirror_interval_secs": 0.2}, "local": {"artifacts_dir": "blocked/a"}},
                      f"run_id,config,seed,overrides,notes\nm,configs/tiny.json,0,steps=2 gate={gate},\n")
    (project / "blocked").write_text("a file where the artifacts dir should be\n")
    sp.wf("sweep-start", check=0)
    wait = subprocess.Popen([WF, "sweep-wait", "--timeout-secs", "120"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    told = ""
    while "p0: mirror of m:" not in told:
        line = wait.stderr.readline()  # the job waits for the gate: a line comes, or sweep-wait ends
        if not line:
            break
        told += line
    gate.touch()
    out, err = wait.communicate(timeout=180)
    assert wait.returncode == 0, out + told + err
    assert "p0: mirror of m:" in told and "(retried)" in told, told + err
    assert sp.run_status("m")["state"] == "success"


# ---------------------------------------------------------------- pools: a run that moves


def _wf(project, *args, check=None):
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check is not None:
        assert proc.returncode == check, f"wf {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _until(pred, what, timeout=120.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _steps(path: Path):
    """The loss steps in a metrics.jsonl (empty while it is not there)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [json.loads(x)["step"] for x in lines if x.startswith("{") and '"loss"' in x]


def _start_events(log: str):
    return [json.loads(x) for x in log.splitlines() if x.startswith("{") and '"event": "start"' in x]


@pytest.mark.xdist_group("wfresume")  # users wfresume0/1 and their ~/wft
def test_a_pool_pod_killed_mid_run_its_run_resumes_on_the_other_from_the_mirror(ssh_client_keys, ssh_session_dir,
                                                                                 project):
    import yaml
    from sshd import SshPod
    from test_balance import kill_pod, ssh_sweep_pool

    pods = [SshPod(ssh_client_keys, ssh_session_dir, user=f"wfresume{i}") for i in range(2)]
    with ssh_sweep_pool(pods, project):
        for p in pods:  # the checkout's venv: CPU torch (torchrun, train.py)
            (p.remote_dir / "repo" / ".venv" / "bin" / "python").unlink()
            shutil.rmtree(p.remote_dir / "repo" / ".venv")
            (p.remote_dir / "repo" / ".venv").symlink_to(TORCH_VENV.resolve())
            os.lchown(p.remote_dir / "repo" / ".venv", p.uid, p.gid)
        path = project / "configs" / "workflow.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["sweep"].update(launcher="torchrun", entrypoint="train.py", args=["{config}", "--seed={seed}"],
                            nproc_per_node=1, resume_args=["--resume"], mirror_interval_secs=0.3)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        (project / "sweeps" / "sweep.csv").write_text(
            "run_id,config,seed,overrides,notes\n"
            'r1,configs/tiny.json,0,"steps=40 ckpt_every=5 log_every=5 sleep_secs=0.2",\n')
        _wf(project, "fsm-reset", "CHECKED_OUT", "--reason", "checkout made by the test", check=0)
        _wf(project, "sweep-start", check=0)
        holder = json.loads((project / ".podflow" / "pool-sweep.json").read_text())["runs"]["r1"]
        dead, alive = (pods[0], pods[1]) if holder == "p0" else (pods[1], pods[0])
        mirrored = project / "artifacts" / "r1"
        wait = subprocess.Popen([WF, "sweep-wait", "--timeout-secs", "240"], cwd=project, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            _until(lambda: (mirrored / "checkpoint.pt").exists()
                   and max(_steps(mirrored / "metrics.jsonl") or [0]) >= 10, "the mirror of the running run")
            kill_pod(dead)
            out, err = wait.communicate(timeout=280)
        finally:
            if wait.poll() is None:
                wait.kill()
        assert wait.returncode == 0, out + err
        assert "took r1" in out + err
        run_dir = alive.home / "wft" / "outputs" / "r1"
        started = _start_events((run_dir / "stdout.log").read_text())
        assert len(started) == 1 and started[0]["resumed"] is True and started[0]["attempt"] == 2
        assert started[0]["step"] >= 5  # from the mirrored checkpoint, not from step 0
        assert "WF_RESUME=1" in (run_dir / "command.sh").read_text()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["ok"] is True and summary["resumed_from_step"] == started[0]["step"]


def test_a_run_moved_off_a_pod_that_answers_takes_its_earlier_files_from_there(pool_sweep):
    sp = pool_sweep
    sp.write_config({"pod": {"provider": "local", "count": 3}, "sweep": {"mirror_interval_secs": 0}})
    record = sp.root / ".podflow" / "pool-sweep.json"
    record.parent.mkdir(exist_ok=True)
    # c failed on p0 in an earlier sweep (its files are there only: no mirror here)
    sp.write_csv("run_id,config,seed,overrides,notes\nc,configs/tiny.json,0,fail=3,\n")
    record.write_text(json.dumps({"runs": {"c": "p0"}}))
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--pod", "p0", "--timeout-secs", "120", check=1)
    assert not (sp.root / "artifacts" / "c").exists()
    # now p0 is busy with a slow run and c waits in its queue: an idle pod takes c
    sp.write_csv("run_id,config,seed,overrides,notes\n"
                 "a,configs/tiny.json,0,steps=3 sleep=2,\nc,configs/tiny.json,0,fail=3,\n")
    record.write_text(json.dumps({"runs": {"a": "p0", "c": "p0"}}))
    sp.wf("sweep-start", check=0)
    waited = sp.wf("sweep-wait", "--timeout-secs", "150", check=1)
    final = json.loads(record.read_text())["runs"]
    assert final["c"] != "p0", waited.stdout + waited.stderr
    moved = sp.outputs_of[int(final["c"][1])] / "c"
    env = json.loads((moved / "args.json").read_text())["env"]
    assert env["WF_RESUME"] == "1" and env["WF_ATTEMPT"] == "2"
    assert json.loads((moved / "status.json").read_text())["attempt"] == 2
