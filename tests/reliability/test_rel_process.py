"""Process faults on the pod: sshd restarted mid-command, the task wrapper and the
tmux server killed, a "reboot" (every process of the test's pod killed), a full disk
on the outputs dir."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from figures import record
from relhelpers import has_traceback, snapshot, wait_until, wf_inproc
from test_tasks_helpers import AgentOpWatch

pytestmark = pytest.mark.ssh


def _outputs(pod) -> Path:
    return pod.remote_dir / "outputs"


def _status(pod, task_id):
    return json.loads((_outputs(pod) / "_tasks" / task_id / "status.json").read_text())


def _gated(go: Path, then: str) -> str:
    """A task command that waits (60 s at most) for the test to create ``go``."""
    return f"for i in $(seq 1200); do [ -e {go} ] && break; sleep 0.05; done; {then}"


def _once_waiting(pod, action, then=lambda: None) -> None:
    """In a thread: ``action`` as soon as the agent's task.wait runs on the pod, then
    ``then``: the fault lands while the command waits, whatever the machine's load."""

    waiting = AgentOpWatch(str(pod.remote_dir), "task.wait")  # one-shot, or on a long-lived agent

    def run():
        wait_until(waiting.started, 30, what="the agent's task.wait on the pod")
        action()
        then()

    threading.Thread(target=run, daemon=True).start()


@pytest.fixture
def spod(ssh_pod, project):
    ssh_pod.write_config(project, pod__connect_timeout_secs=3)
    assert wf_inproc("task-list").code == 0
    return ssh_pod


def test_sshd_restarted_mid_command(spod):
    """A listener restart leaves open sessions alone (as a real sshd does); one that
    also drops the sessions fails the command with 4 at once. Either way the task's
    truth is reported by the next command."""
    go_a, go_b = _outputs(spod) / "go-a", _outputs(spod) / "go-b"
    assert wf_inproc("task-run", "--id", "a", "--cmd", _gated(go_a, "echo ok-a")).code == 0
    _once_waiting(spod, spod.restart, then=go_a.touch)
    r = wf_inproc("task-wait", "--id", "a", "--timeout-secs", "60")
    assert r.code == 0 and "ok-a" in wf_inproc("task-logs", "--id", "a").out, r.text

    assert wf_inproc("task-run", "--id", "b", "--cmd", _gated(go_b, "echo ok-b")).code == 0

    def hard_restart():
        spod.drop_connections()
        spod.restart()

    _once_waiting(spod, hard_restart)
    r = wf_inproc("task-wait", "--id", "b")
    assert r.code == 4 and not has_traceback(r.text), r.text
    go_b.touch()
    r = wf_inproc("task-wait", "--id", "b", "--json", "--timeout-secs", "60")
    assert r.code == 0 and json.loads(r.out).get("state") == "success", r.text

    # sessions dropped at random moments of task-run: exit 0 or 4, never a hang, and
    # the task is then either absent or running/success (never stuck pending)
    outcomes = {0: 0, 4: 0}
    for i in range(6):
        tid = f"r{i}"
        t = threading.Timer(random.uniform(0.0, 0.25), spod.drop_connections)
        t.start()
        r = wf_inproc("task-run", "--id", tid, "--cmd", "sleep 0.5")
        t.join()
        assert r.code in (0, 4) and r.secs < 10 and not has_traceback(r.text), r.text
        outcomes[r.code] += 1
        st = wf_inproc("task-wait", "--id", tid, "--timeout-secs", "70", "--json")
        if st.code == 2:  # never created
            assert "no task" in st.err, st.text
        else:
            doc = json.loads(st.out)
            assert doc.get("state") in ("success", "lost", "failed"), (doc, st.err)
            if r.code == 0:
                assert doc["state"] == "success", doc
    record("faults", "sshd restarted mid-command (listener only, sessions dropped, 6 random drops in task-run)",
           count=8, survived=True, outcomes=outcomes)


def test_wrapper_killed_reads_lost(spod):
    assert wf_inproc("task-run", "--id", "w", "--cmd", "sleep 60").code == 0
    st = _status(spod, "w")
    os.kill(st["wrapper_pid"], signal.SIGKILL)
    r = wf_inproc("task-wait", "--id", "w", "--json")
    assert r.code == 1, r.text
    doc = json.loads(r.out)
    assert doc["state"] == "lost" and "wrapper" in doc["error"]
    wait_until(lambda: not os.path.exists(f"/proc/{st['pid']}"), 5, what="the orphaned command killed")
    assert _status(spod, "w")["state"] == "lost"  # recorded, not just reported
    record("faults", "task wrapper SIGKILLed -> lost", survived=True)


def _tmux_server_pids(pod):
    out = []
    for pid in pod.user_pids():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("tmux"):
            out.append(pid)
    return out


def test_tmux_server_killed_reads_lost(spod):
    assert wf_inproc("task-run", "--id", "t1", "--cmd", "sleep 60").code == 0
    assert wf_inproc("task-run", "--id", "t2", "--cmd", "sleep 60").code == 0
    servers = _tmux_server_pids(spod)
    assert servers, "no tmux server found for this pod"
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    for tid in ("t1", "t2"):
        r = wf_inproc("task-wait", "--id", tid, "--timeout-secs", "20", "--json")
        assert r.code == 1, r.text
        assert json.loads(r.out)["state"] == "lost"
    # the next task starts a fresh server and runs
    assert wf_inproc("task-run", "--id", "t3", "--cmd", "echo fine").code == 0
    assert wf_inproc("task-wait", "--id", "t3").code == 0
    record("faults", "tmux server SIGKILLed with 2 tasks running -> both lost, next task runs", survived=True)


def test_reboot_kills_everything_tasks_read_lost(spod):
    for tid in ("x1", "x2"):
        assert wf_inproc("task-run", "--id", tid, "--cmd", "sleep 60").code == 0
    for _ in range(5):
        for pid in spod.user_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    r = wf_inproc("task-list", "--json")
    assert r.code == 0, r.text
    assert {t["id"]: t["state"] for t in json.loads(r.out)["tasks"]} == {"x1": "lost", "x2": "lost"}
    r = wf_inproc("task-run", "--id", "x1", "--force", "--cmd", "echo again")
    assert r.code == 0, r.text
    assert wf_inproc("task-wait", "--id", "x1").code == 0
    assert _status(spod, "x1")["attempt"] == 2
    record("faults", "reboot (every process of the pod killed) with 2 tasks running", survived=True)


# ---------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(ssh_pod, project):
    """``outputs_dir`` on a 2 MB tmpfs, owned by the pod user; unmounted at teardown."""
    out = _outputs(ssh_pod)
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=2m,uid={ssh_pod.uid},gid={ssh_pod.gid},mode=0755",
                    "wfrel-tmpfs", str(out)], check=True, capture_output=True)
    try:
        ssh_pod.write_config(project, pod__connect_timeout_secs=3)
        yield ssh_pod
    finally:
        for pid in ssh_pod.user_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def _fill(pod) -> Path:
    """Fill the outputs dir to the last byte, as the pod user."""
    filler = _outputs(pod) / "filler.bin"
    r = pod.run_as_user(["sh", "-c", f"cat /dev/zero > '{filler}'"])
    assert "No space" in r.stderr, r.stderr
    return filler


def test_full_disk_clear_error_and_files_intact(small_disk, project):
    pod = small_disk
    assert wf_inproc("fsm-reset", "POD_READY", "--reason", "test").code == 0
    assert wf_inproc("task-run", "--id", "done", "--cmd", "echo before-the-disk-filled").code == 0
    assert wf_inproc("task-wait", "--id", "done").code == 0
    assert wf_inproc("task-run", "--id", "busy", "--cmd", "sleep 7; echo still-fine").code == 0
    filler = _fill(pod)
    before = {k: v for k, v in snapshot(_outputs(pod)).items() if k.endswith(".json")
              and "busy" not in k}
    tried = 0
    for argv in (("task-run", "--id", "new", "--cmd", "echo hi"),
                 ("fsm-reset", "BOOTSTRAPPED", "--reason", "disk full"),
                 ("task-run", "--id", "done", "--force", "--cmd", "echo again")):
        r = wf_inproc(*argv)
        tried += 1
        assert r.code in (1, 2), (argv, r.text)
        assert "No space left on device" in r.err or "disk" in r.err.lower(), (argv, r.err)
        assert not has_traceback(r.text), (argv, r.text)
    # reading still works and reports the truth
    r = wf_inproc("fsm-status", "--json")
    assert r.code == 0 and json.loads(r.out)["state"] == "POD_READY", r.text
    after = {k: v for k, v in snapshot(_outputs(pod)).items() if k.endswith(".json") and "busy" not in k}
    assert after == before, ("a state or status file changed (or was truncated) on a full disk",
                             sorted(set(after) ^ set(before)), [k for k in after if before.get(k) != after[k]])
    for k, v in after.items():
        json.loads(v)
    time.sleep(5.5)  # the running task's heartbeat hits the full disk
    filler.unlink()
    r = wf_inproc("task-wait", "--id", "busy", "--json")
    assert r.code == 0 and json.loads(r.out)["state"] == "success", r.text
    assert wf_inproc("task-run", "--id", "new", "--cmd", "echo hi").code == 0
    assert wf_inproc("task-wait", "--id", "new").code == 0
    record("faults", f"outputs dir full (2 MB tmpfs): {tried} writes refused clearly, files intact, "
           "running task survived", count=tried, survived=True)
