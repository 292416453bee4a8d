"""Tracked tasks over a real sshd on loopback (tests/sshd.py), as the pod user.

The connection is dropped while a task runs (it keeps running, and the status is right
after reconnecting), and the main behaviours of ``test_tasks.py`` are checked again
through SSH: one exec per command, follow streaming, kill of a process tree, lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from test_tasks_helpers import AgentOpWatch, StreamGate, gate_path, live_pids_with, wait_until
from workflow import runtime, tracked
from workflow.errors import ConnectionFailed, InputError, PodflowError, RemoteProtocolError

pytestmark = pytest.mark.ssh
WF = str(Path(sys.executable).with_name("wf"))


@pytest.fixture
def spod(ssh_pod, project):
    """The ssh pod, configured in the project; the agent installed, calls counted from 0."""
    ssh_pod.write_config(project, remote__env={"FROM_REMOTE_ENV": "over-ssh"})
    agent = runtime.agent()
    agent.install()
    agent.calls = 0
    yield ssh_pod, agent
    runtime.reset()


def outputs(pod) -> Path:
    return pod.remote_dir / "outputs"


def disk_status(pod, task_id):
    return json.loads((outputs(pod) / "_tasks" / task_id / "status.json").read_text())


def test_run_wait_exit_codes_and_one_exec_each(spod):
    pod, agent = spod
    st = tracked.start_task(agent, "ok", 'echo "$HOME" "$FROM_REMOTE_ENV" "$(id -un)"; echo err >&2')
    assert agent.calls == 1 and st.tmux_session == f"wft-{pod.id}-tasks"
    assert tracked.wait_task(agent, "ok").ok and agent.calls == 2
    log = (outputs(pod) / "_tasks" / "ok" / "stdout.log").read_text()
    assert log == f"{pod.home} over-ssh {pod.user}\nerr\n"
    tracked.start_task(agent, "bad", "exit 42")
    with pytest.raises(tracked.TaskFailed) as info:
        tracked.wait_task(agent, "bad")
    assert info.value.status.exit_code == 42 and int(info.value.exit_code) == 1
    agent.calls = 0
    rows = tracked.list_tasks(agent)
    assert [(r.id, r.state, r.exit_code) for r in rows] == [("ok", "success", 0), ("bad", "failed", 42)]
    assert agent.calls == 1
    assert runtime.transport().connects == 1
    assert disk_status(pod, "ok")["pid"]  # the command ran as the pod user, files are the user's
    assert (outputs(pod) / "_tasks" / "ok" / "status.json").stat().st_uid == pod.uid


def test_connection_dropped_while_a_task_runs(spod):
    pod, agent = spod
    tracked.start_task(agent, "survivor", "sleep 1.5; echo made-it")
    pod.drop_connections()
    runtime.reset()  # the next invocation: a fresh connection
    agent = runtime.agent()
    assert tracked.task_status(agent, "survivor").state == "running"
    st = tracked.wait_task(agent, "survivor")
    assert st.ok and "made-it" in st.log_tail


def test_connection_dropped_during_task_wait(spod):
    pod, agent = spod
    go = gate_path()
    tracked.start_task(agent, "longer", f"while [ ! -e {go} ]; do sleep 0.05; done; echo fine")
    waiting = AgentOpWatch(agent.agent_path, "task.wait")

    def drop_once_waiting():
        wait_until(waiting.started, 30)
        pod.drop_connections()

    threading.Thread(target=drop_once_waiting, daemon=True).start()
    with pytest.raises(PodflowError) as info:
        tracked.wait_task(agent, "longer")
    assert isinstance(info.value, (ConnectionFailed, RemoteProtocolError)), info.value
    # the agent's wait on the pod notices nobody listens any more and ends (the task does not),
    # and so does every long-lived agent of the dropped connection
    assert wait_until(lambda: not waiting.one_shot() and not waiting.serving(), 10)
    runtime.reset()
    agent = runtime.agent()
    assert tracked.task_status(agent, "longer").state == "running"
    go.touch()
    assert tracked.wait_task(agent, "longer").ok
    shutil.rmtree(go.parent)


def test_follow_streams_over_ssh(spod):
    pod, agent = spod
    gate = StreamGate("tick1")
    tracked.start_task(agent, "talk", gate.script("echo tick2; echo tick3"))
    agent.calls = 0
    st = tracked.task_logs(agent, "talk", follow=True, sink=gate.sink)
    gate.close()
    assert gate.text == "tick1\ntick2\ntick3\n" and st.ok and agent.calls == 1


def test_kill_a_process_tree_over_ssh(spod):
    pod, agent = spod
    tracked.start_task(agent, "tree", "bash -c 'sleep 71.25 & sleep 71.25; wait' & setsid sleep 71.25 & sleep 71.25")
    assert wait_until(lambda: len(live_pids_with("sleep 71.25")) >= 4, 3)
    st, was_active = tracked.kill_task(agent, "tree", grace_secs=1)
    assert was_active and st.state == "cancelled"
    assert live_pids_with("sleep 71.25") == []


def test_an_agent_op_past_its_transport_time_out_ends_on_the_pod(spod):
    """An op on a long-lived agent that outlives its transport time-out fails as a one-shot
    one does (exit 124, no answer), its agent ends, and the next op gets another."""
    pod, agent = spod
    tracked.start_task(agent, "slow", "sleep 60.5")
    (busy,) = AgentOpWatch(agent.agent_path, "task.wait").serving()
    with pytest.raises(RemoteProtocolError, match="exit 124"):
        agent.call("task.wait", timeout=1, id="slow", wait_secs=30)
    assert wait_until(lambda: busy not in live_pids_with(f"{agent.agent_path} serve"), 10)
    assert tracked.task_status(agent, "slow").state == "running"
    tracked.kill_task(agent, "slow", grace_secs=1)


def test_timeout_over_ssh(spod):
    pod, agent = spod
    t0 = time.monotonic()
    tracked.start_task(agent, "to", "sleep 60.75", timeout_secs=2)
    st = tracked.wait_task(agent, "to", check=False)
    assert st.state == "timed_out" and time.monotonic() - t0 < 5
    assert live_pids_with("sleep 60.75") == []


def test_wrapper_killed_and_tmux_killed_give_lost(spod):
    pod, agent = spod
    st = tracked.start_task(agent, "w9", "sleep 72.5")
    tracked.start_task(agent, "mux", "sleep 72.75")
    os.kill(st.extra["wrapper_pid"], signal.SIGKILL)
    assert wait_until(lambda: tracked.task_status(agent, "w9").state == "lost", 3)
    assert disk_status(pod, "w9")["state"] == "lost"
    # the tmux server lives in this pod's own TMUX_TMPDIR, as the pod user
    r = pod.run_as_user(["tmux", "-L", st.tmux_socket, "kill-server"])
    assert r.returncode == 0, r.stderr
    with pytest.raises(tracked.TaskFailed) as info:
        tracked.wait_task(agent, "mux", timeout_secs=5)
    assert info.value.status.state == "lost"
    assert wait_until(lambda: live_pids_with("72.") == [], 3)


def test_200_tasks_listed_in_one_exec_over_ssh(spod):
    pod, agent = spod
    script = (
        "import json, os, sys\n"
        "root = sys.argv[1]\n"
        "for i in range(199):\n"
        "    d = os.path.join(root, 'bulk-%03d' % i); os.makedirs(d)\n"
        "    json.dump({'id': os.path.basename(d), 'state': 'success', 'exit_code': 0, 'command': 'true',\n"
        "               'created_at': '2026-01-01T00:00:%02d.%06dZ' % (i % 60, i), 'started_at': None,\n"
        "               'finished_at': None, 'timeout_secs': None, 'pid': None, 'heartbeat_at': None,\n"
        "               'attempt': 1}, open(os.path.join(d, 'status.json'), 'w'))\n"
    )
    r = pod.run_as_user(["python3", "-c", script, str(outputs(pod) / "_tasks")])
    assert r.returncode == 0, r.stderr
    tracked.start_task(agent, "live", "sleep 3")
    agent.calls = 0
    rows = tracked.list_tasks(agent)
    assert agent.calls == 1 and len(rows) == 200
    assert {r.state for r in rows} == {"success", "running"}


def test_bad_ids_and_secret_env_over_ssh(spod):
    pod, agent = spod
    with pytest.raises(InputError):
        tracked.start_task(agent, "a$(touch /tmp/pwned)", "true")
    with pytest.raises(InputError):
        agent.call("task.run", id="a;b", command="true")
    assert agent.calls == 1
    secret = "ssh-secret-canary-789"
    tracked.start_task(agent, "env", "sleep 0.5; echo \"$TOKEN\"", env={"TOKEN": secret})
    ps = subprocess.run(["ps", "axww", "-o", "args"], capture_output=True, text=True).stdout
    assert secret not in ps
    assert tracked.wait_task(agent, "env").log_tail == secret + "\n"
    for f in outputs(pod).rglob("*"):
        if f.is_file() and f.name != "stdout.log":
            assert secret.encode() not in f.read_bytes(), f


def test_cli_over_ssh(spod, project):
    pod, agent = spod
    runtime.reset()

    def wf(*args):
        return subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=60)

    r = wf("task-run", "--id", "cli", "--cmd", "echo 'it''s' \"$X\"", "--env", "X=y z")
    assert r.returncode == 0 and r.stdout.strip() == "cli", r.stderr
    r = wf("task-wait", "--id", "cli", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "success"
    r = wf("task-logs", "--id", "cli", "--follow")
    assert r.stdout == "its y z\n"
    r = wf("task-run", "--id", "cli", "--cmd", "true")
    assert r.returncode == 2
    r = wf("task-run", "--id", "cli2", "--cmd", "sleep 5")
    r = wf("task-wait", "--id", "cli2", "--timeout-secs", "0.5")
    assert r.returncode == 5
    r = wf("task-kill", "--id", "cli2", "--json")
    assert json.loads(r.stdout)["state"] == "cancelled"
    r = wf("task-wait", "--id", "cli2")
    assert r.returncode == 1
