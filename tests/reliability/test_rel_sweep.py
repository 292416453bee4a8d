"""Sweeps under faults: the link cut during sweep-start, a "reboot" (every process of
the pod's run killed) mid-sweep, the runner killed, two sweep-starts at once, and GPUs
never shared between concurrent runs."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from figures import record
from relhelpers import JOB, WF, has_traceback, sweep_project, wait_until, wf_inproc, wf_proc

pytestmark = pytest.mark.ssh


def _run_status(pod, run_id):
    p = pod.remote_dir / "outputs" / run_id / "status.json"
    return json.loads(p.read_text()) if p.exists() else None


def _launches(pod, run_id):
    p = pod.remote_dir / "outputs" / run_id / "launches.txt"
    return p.read_text().splitlines() if p.exists() else []


def _state(pod):
    return json.loads((pod.remote_dir / "outputs" / "_control" / "workflow_state.json").read_text())["state"]


def _kill_pod_processes(pod) -> int:
    """The "reboot": SIGKILL to every process of this pod's test run (by PID, from /proc:
    the test user's processes carrying this pod's WF_TEST_POD mark)."""
    n = 0
    for _ in range(5):
        pids = pod.user_pids()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    assert not pod.user_pids()
    return n


ROWS = [("r1", "sleep=0.1"), ("r2", "sleep=0.1"), ("r3", "sleep_once=60"), ("r4", "sleep=0.1")]


def test_reboot_mid_sweep_then_sweep_start_finishes_the_rest(ssh_pod, project):
    sweep_project(ssh_pod, project, ROWS)
    assert wf_inproc("sweep-start").code == 0
    # the job itself is inside its long sleep (its marker written), not merely launched
    wait_until(lambda: (ssh_pod.remote_dir / "outputs" / "r3" / "slept-once").exists(), 20, what="r3 sleeping")
    killed = _kill_pod_processes(ssh_pod)
    # the truth after the reboot: r1, r2 ok, r3 lost, r4 never ran; the runner is dead
    r = wf_inproc("sweep-status", "--json")
    assert r.code in (0, 1), r.text
    doc = json.loads(r.out)
    states = {run["id"]: run["state"] for run in doc["runs"]}
    assert states["r1"] == states["r2"] == "success"
    assert states["r3"] == "lost"
    assert states["r4"] != "success"
    assert _state(ssh_pod) == "SWEEP_RUNNING"
    r = wf_inproc("sweep-start")
    assert r.code == 0, r.text
    r = wf_inproc("sweep-wait", "--timeout-secs", "60")
    assert r.code == 0, r.text
    for run_id in ("r1", "r2"):
        assert len(_launches(ssh_pod, run_id)) == 1, f"{run_id} ran again after the reboot"
        assert _run_status(ssh_pod, run_id)["attempt"] == 1
    assert all(_run_status(ssh_pod, r)["state"] == "success" for r in ("r3", "r4"))
    assert len(_launches(ssh_pod, "r4")) == 1
    assert _state(ssh_pod) == "SWEEP_COMPLETED"
    record("faults", f"reboot mid-sweep ({killed} processes killed), sweep-start resumed", survived=True)


def test_runner_killed_runs_lost_and_resumed(ssh_pod, project):
    sweep_project(ssh_pod, project, [("a1", "sleep_once=60"), ("a2", "sleep=0.1")])
    assert wf_inproc("sweep-start").code == 0
    wait_until(lambda: (ssh_pod.remote_dir / "outputs" / "a1" / "slept-once").exists(), 20, what="a1 sleeping")
    runner = json.loads((ssh_pod.remote_dir / "outputs" / "_control" / "sweep" / "runner" / "status.json").read_text())
    os.kill(runner["wrapper_pid"], signal.SIGKILL)
    os.kill(runner["pid"], signal.SIGKILL)
    r = wf_inproc("sweep-status", "--json")
    doc = json.loads(r.out)
    assert {x["id"]: x["state"] for x in doc["runs"]}["a1"] == "lost", r.out
    assert doc["state"] in ("runner_dead",), doc["state"]
    assert wf_inproc("sweep-start").code == 0
    assert wf_inproc("sweep-wait", "--timeout-secs", "60").code == 0
    assert _run_status(ssh_pod, "a1")["state"] == "success" and len(_launches(ssh_pod, "a2")) == 1
    record("faults", "sweep runner killed mid-run (runs lost, sweep-start resumed)", survived=True)


def test_two_sweep_starts_at_once_exactly_one_starts(ssh_pod, project):
    sweep_project(ssh_pod, project, [("c1", "sleep=1"), ("c2", "sleep=0.1")])
    assert wf_inproc("task-list").code == 0  # the agent installed, the host key pinned
    env = dict(os.environ)
    procs = [subprocess.Popen([WF, "sweep-start"], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(60), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _, _ in results)
    assert codes == [0, 3], results
    refused = [e for c, _, e in results if c == 3][0]
    assert "sweep-start" in refused and not has_traceback(refused)
    assert wf_inproc("sweep-wait", "--timeout-secs", "60").code == 0
    for run_id in ("c1", "c2"):
        assert len(_launches(ssh_pod, run_id)) == 1
    record("concurrency", "two sweep-start at once (exactly one started)", survived=True)


def test_concurrent_runs_never_share_a_gpu(ssh_pod, project):
    rows = [(f"g{i}", f"sleep={0.6 + 0.1 * (i % 3)}", 1 + (i % 2)) for i in range(8)]
    sweep_project(ssh_pod, project, rows, remote__env={"CUDA_VISIBLE_DEVICES": "0,1,2"})
    assert wf_inproc("sweep-start").code == 0
    assert wf_inproc("sweep-wait", "--timeout-secs", "90").code == 0
    spans = []
    for run_id, _, gpus in rows:
        t0, t1, cvd = _launches(ssh_pod, run_id)[0].split()
        got = cvd.split(",")
        assert len(got) == gpus and set(got) <= {"0", "1", "2"}, (run_id, cvd)
        spans.append((float(t0), float(t1), set(got), run_id))
    overlaps = 0
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            if a[0] < b[1] and b[0] < a[1]:
                overlaps += 1
                assert not (a[2] & b[2]), f"{a[3]} and {b[3]} ran at once on GPU(s) {a[2] & b[2]}"
    assert overlaps >= 2  # the check meant something: runs did run side by side
    record("concurrency", f"runs packed on 3 fake GPUs ({overlaps} overlapping pairs, none shared)", survived=True)


def test_two_unix_users_sharing_a_pod_never_share_a_gpu(ssh_pod, project, tmp_path):
    """Seed 004's multi-agent rule, locked: the pod user (over SSH) and root (on the same
    machine, local provider) each sweep over the same 2 fake GPUs; the pod-wide GPU leases
    keep every GPU to one run at a time across both users.

    That they really contend does not rest on timing: the test holds both GPUs' leases
    until both runners are seen waiting for them at once, then lets go."""
    import yaml

    leases = ssh_pod.remote_dir / "leases"
    leases.mkdir()
    os.chmod(leases, 0o1777)
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "PODFLOW_GPU_LEASE_DIR": str(leases)}
    rows = [(f"u{i}", "sleep=0.5", 1) for i in range(4)]
    sweep_project(ssh_pod, project, rows, remote__env=env)
    other = tmp_path / "root-user"
    repo, outputs = other / "pod" / "repo", other / "pod" / "outputs"
    (repo / "configs").mkdir(parents=True)
    (repo / "job.py").write_text(JOB)
    (repo / "configs" / "a.yaml").write_text("lr: 0.1\n")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (other / "configs").mkdir()
    (other / "sweeps").mkdir()
    (other / "sweeps" / "s.csv").write_text("run_id,config,seed,overrides,notes,gpus\n" + "".join(
        f"r{i},configs/a.yaml,1,sleep=0.5,,1\n" for i in range(4)))
    (other / "configs" / "workflow.yaml").write_text(yaml.safe_dump({
        "project": "root-user", "pod": {"provider": "local"},
        "remote": {"workdir": str(repo), "outputs_dir": str(outputs), "env": env},
        "sweep": {"csv": "sweeps/s.csv", "workdir": ".", "entrypoint": "job.py", "launcher": "python",
                  "args": ["{config}", "--seed={seed}"]}}))
    assert wf_proc("fsm-reset", "CHECKED_OUT", "--reason", "test", cwd=other).code == 0
    held = []
    for gpu in ("0", "1"):
        fd = os.open(leases / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        os.fchmod(fd, 0o666)  # both users' runners open it
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    try:
        assert wf_inproc("sweep-start").code == 0
        assert wf_proc("sweep-start", cwd=other).code == 0
        # each runner marks itself waiting (waiting-<sweep>-<pid>) while GPUs it needs are held
        wait_until(lambda: len(list(leases.glob("waiting-*"))) == 2, 60, what="both sweeps waiting for the GPUs")
    finally:
        for fd in held:
            os.close(fd)  # lets go of the leases
    assert wf_inproc("sweep-wait", "--timeout-secs", "90").code == 0
    assert wf_proc("sweep-wait", "--timeout-secs", "90", cwd=other).code == 0
    spans = []
    for out_dir, names, who in ((ssh_pod.remote_dir / "outputs", [r[0] for r in rows], "pod user"),
                                (outputs, [f"r{i}" for i in range(4)], "root")):
        for run_id in names:
            t0, t1, cvd = (out_dir / run_id / "launches.txt").read_text().split()
            spans.append((float(t0), float(t1), cvd, f"{who}:{run_id}"))
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            if a[0] < b[1] and b[0] < a[1]:
                assert a[2] != b[2], f"{a[3]} and {b[3]} ran at once on GPU {a[2]}"
    record("concurrency", "two unix users' sweeps on one pod, 2 fake GPUs: both waiting on the same GPUs, "
           "no GPU shared", survived=True)


def test_link_cut_during_sweep_start(netns_pod, project):
    sweep_project(netns_pod, project, [("n1", "sleep=3"), ("n2", "sleep=0.1")], pod__connect_timeout_secs=3)
    assert wf_inproc("task-list").code == 0
    # slow the link so the command is still talking when it goes down
    subprocess.run(["tc", "qdisc", "add", "dev", netns_pod.veth, "root", "tbf", "rate", "24kbit", "burst", "1600",
                    "latency", "2s"], check=True, capture_output=True)
    try:
        threading.Timer(0.4, netns_pod.cut).start()
        r = wf_inproc("sweep-start")
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", netns_pod.veth, "root"], capture_output=True)
    assert r.code == 4, r.text
    assert r.secs <= 0.4 + 3 + 15, r.secs
    assert not has_traceback(r.text)
    netns_pod.restore()
    # the first command after the link returns tells the truth, whichever side of the
    # cut the start landed on
    r = wf_inproc("fsm-status", "--json")
    assert r.code == 0, r.text
    state = json.loads(r.out)["state"]
    assert state == _state(netns_pod)
    if state == "CHECKED_OUT":  # the start never reached the pod: nothing ran
        assert _run_status(netns_pod, "n1") is None
        assert wf_inproc("sweep-start").code == 0
    else:
        assert state in ("SWEEP_RUNNING", "SWEEP_COMPLETED")
    r = wf_inproc("sweep-wait", "--timeout-secs", "60")
    assert r.code == 0, r.text
    assert [len(_launches(netns_pod, x)) for x in ("n1", "n2")] == [1, 1]
    record("faults", f"link cut during sweep-start (landed: {state})", survived=True)


def test_two_clients_race_for_one_task_id_and_one_state(ssh_pod, project, tmp_path):
    """Two clients (separate projects, own known_hosts) on one pod at once: the same
    task id started by both -> exactly one runs; fsm-reset by both -> both recorded."""
    other = tmp_path / "other"
    (other / "configs").mkdir(parents=True)
    for root in (project, other):
        ssh_pod.write_config(root)
        assert wf_proc_ok(root, "task-list")
    procs = [subprocess.Popen([WF, "task-run", "--id", "same", "--cmd", f"echo from-{i}; sleep 0.5"], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, root in enumerate((project, other))]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    assert sorted(c for c, _ in results) == [0, 2], results
    assert "already exists" in [e for c, e in results if c == 2][0]
    procs = [subprocess.Popen([WF, "fsm-reset", state], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for state, root in (("BOOTSTRAPPED", project), ("POD_READY", other))]
    assert [p.wait(60) for p in procs] == [0, 0]
    doc = json.loads((ssh_pod.remote_dir / "outputs" / "_control" / "workflow_state.json").read_text())
    assert [h["to"] for h in doc["history"]][-2:] in (["BOOTSTRAPPED", "POD_READY"], ["POD_READY", "BOOTSTRAPPED"])
    assert doc["history"][-1]["from"] == doc["history"][-2]["to"]  # no lost update
    record("concurrency", "two clients: same task id at once (one ran), two fsm-resets at once (both kept)",
           count=2, survived=True)


def wf_proc_ok(root, *argv) -> bool:
    return subprocess.run([WF, *argv], cwd=root, capture_output=True).returncode == 0
