"""Tracked tasks on the ``local`` provider: real tmux, real processes, real /proc.

Mirrors ``workflow/tracked.py`` (client API) and ``workflow/agent/tasks.py`` +
``procs.py`` (the pod side). Every test gets its own outputs dir, hence its own tmux
socket; the server is killed at teardown (its wrappers then stop their tasks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from test_tasks_helpers import StreamGate, kill_tmux_server, live_pids_with, wait_until
from workflow import runtime, tracked
from workflow.agent import procs
from workflow.agent.fsutil import parse_time, utcnow
from workflow.errors import InputError, WaitTimeout

WF = str(Path(sys.executable).with_name("wf"))
SYSTEM_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
SPEC_KEYS = {"id", "state", "exit_code", "command", "created_at", "started_at", "finished_at",
             "timeout_secs", "pid", "heartbeat_at", "attempt"}


@pytest.fixture
def pod(project):
    """A local "pod": config in the project, the agent installed, calls counted from 0."""
    (project / "configs" / "workflow.yaml").write_text(
        "project: tt\npod:\n  provider: local\nremote:\n  env:\n    FROM_REMOTE_ENV: yes-it-is\n")
    agent = runtime.agent()
    agent.python = SYSTEM_PY  # a plain python3, as on a pod (not this machine's pyenv shim)
    agent.install()
    agent.calls = 0
    outputs = Path(agent.outputs_dir)
    yield agent
    kill_tmux_server(procs.tmux_socket_name(str(outputs)))
    # nothing a test started may outlive it
    nonces = []
    for f in (outputs / "_tasks").glob("*/status.json"):
        try:
            nonces.append(json.loads(f.read_text()).get("nonce"))
        except ValueError:
            pass
    wait_until(lambda: not any(procs.job_pids(n) for n in nonces), 3)
    for n in nonces:
        for pid in procs.job_pids(n):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tasks_dir(agent) -> Path:
    return Path(agent.outputs_dir) / "_tasks"


def disk_status(agent, task_id):
    return json.loads((tasks_dir(agent) / task_id / "status.json").read_text())


# ---------------------------------------------------------------- run, wait, exit codes


def test_success_and_failure_exit_codes(pod):
    st = tracked.start_task(pod, "ok1", "echo out; echo err >&2")
    assert st.state in ("running", "success") and pod.calls == 1
    done = tracked.wait_task(pod, "ok1")
    assert done.state == "success" and done.exit_code == 0
    assert (tasks_dir(pod) / "ok1" / "stdout.log").read_text() == "out\nerr\n"
    assert pod.calls == 2

    tracked.start_task(pod, "bad1", "echo dying; exit 7")
    with pytest.raises(tracked.TaskFailed) as info:
        tracked.wait_task(pod, "bad1")
    assert info.value.exit_code == 1 and info.value.status.exit_code == 7
    assert info.value.status.state == "failed" and "dying" in info.value.output_tail
    assert tracked.wait_task(pod, "bad1", check=False).exit_code == 7

    doc = disk_status(pod, "ok1")
    assert SPEC_KEYS <= set(doc)
    assert doc["finished_at"].endswith("Z") and doc["started_at"] <= doc["finished_at"]
    assert doc["attempt"] == 1 and doc["pid"] and doc["heartbeat_at"]


def test_wait_returns_as_soon_as_the_task_ends(pod):
    """One call, answered when the task's status says it ended: the lag from its finished_at
    to the answer is the agent's fine watch (not a poll interval, not the machine's load)."""
    tracked.start_task(pod, "quick", "sleep 0.3")
    pod.calls = 0
    st = tracked.wait_task(pod, "quick")
    lag = (datetime.now(timezone.utc) - parse_time(st.finished_at)).total_seconds()
    assert st.ok and pod.calls == 1 and lag < 1.5, lag


def test_wait_timeout_exits_5_and_the_task_goes_on(pod):
    tracked.start_task(pod, "slow", "sleep 30", grace_secs=0.5)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        tracked.wait_task(pod, "slow", timeout_secs=0.4)
    assert int(info.value.exit_code) == 5 and time.monotonic() - t0 < 2
    assert tracked.task_status(pod, "slow").state == "running"


def test_timeout_terminates_the_whole_group_within_5s(pod):
    t0 = time.monotonic()
    tracked.start_task(pod, "to", "sleep 60.123 & sleep 60.123; wait", timeout_secs=2, grace_secs=1)
    assert wait_until(lambda: live_pids_with("sleep 60.123"), 2)
    with pytest.raises(tracked.TaskFailed) as info:
        tracked.wait_task(pod, "to")
    assert time.monotonic() - t0 < 5
    st = info.value.status
    assert st.state == "timed_out" and st.exit_code == 143 and "timed out" in st.error
    assert live_pids_with("sleep 60.123") == []
    assert "timed out after 2s" in (tasks_dir(pod) / "to" / "stdout.log").read_text()


def test_timeout_kill_after_grace_when_term_is_ignored(pod):
    tracked.start_task(pod, "stubborn", "trap '' TERM; sleep 61.5; sleep 61.5", timeout_secs=0.5, grace_secs=0.5)
    st = tracked.wait_task(pod, "stubborn", check=False)
    assert st.state == "timed_out" and st.exit_code == 137
    assert live_pids_with("sleep 61.5") == []


# ---------------------------------------------------------------- kill


def test_kill_leaves_no_grandchild_alive(pod):
    # children, a grandchild in the group, and one that left the group with setsid
    cmd = ("bash -c 'sleep 62.25 & sleep 62.25 & wait' &\n"
           "setsid sleep 62.25 &\n"
           "python3 -c 'import time; time.sleep(62.25)'\n")
    tracked.start_task(pod, "tree", cmd)
    assert wait_until(lambda: len(live_pids_with("62.25")) >= 4, 3)
    pod.calls = 0
    st, was_active = tracked.kill_task(pod, "tree", grace_secs=1)
    assert was_active and st.state == "cancelled" and pod.calls == 1
    assert live_pids_with("62.25") == []
    again, was_active = tracked.kill_task(pod, "tree")
    assert not was_active and again.state == "cancelled"


def test_kill_escalates_to_kill_for_a_term_ignoring_task(pod):
    tracked.start_task(pod, "deaf", "trap '' TERM; sleep 63.5")
    t0 = time.monotonic()
    st, _ = tracked.kill_task(pod, "deaf", grace_secs=0.5)
    assert st.state == "cancelled" and time.monotonic() - t0 < 3
    assert live_pids_with("sleep 63.5") == []


# ---------------------------------------------------------------- the truth after crashes


def test_kill_9_of_the_wrapper_gives_lost_and_no_leftovers(pod):
    st = tracked.start_task(pod, "orphan", "sleep 64.5")
    wrapper = st.extra["wrapper_pid"]
    assert procs.WRAP_COMMAND.encode() in Path(f"/proc/{wrapper}/cmdline").read_bytes()
    os.kill(wrapper, signal.SIGKILL)
    assert wait_until(lambda: not procs.wrapper_alive(disk_status(pod, "orphan")), 3)
    got = tracked.task_status(pod, "orphan")
    assert got.state == "lost" and "gone" in got.error
    assert disk_status(pod, "orphan")["state"] == "lost"  # recorded, not just reported
    assert live_pids_with("sleep 64.5") == []  # the orphaned command was killed


def test_tmux_kill_server_gives_lost(pod):
    st = tracked.start_task(pod, "inmux", "sleep 65.5")
    assert st.tmux_socket and st.tmux_session == "tt-tasks"
    kill_tmux_server(st.tmux_socket)
    with pytest.raises(tracked.TaskFailed) as info:
        tracked.wait_task(pod, "inmux", timeout_secs=5)
    assert info.value.status.state == "lost"
    assert wait_until(lambda: live_pids_with("sleep 65.5") == [], 3)


def test_reused_pid_is_not_taken_for_the_task(pod):
    tracked.start_task(pod, "reuse", "sleep 66.5")
    d = tasks_dir(pod) / "reuse"
    stranger = subprocess.Popen(["sleep", "66.75"])
    try:
        # the wrapper dies; its pid "is reused" by an unrelated live process
        wrapper = disk_status(pod, "reuse")["wrapper_pid"]
        os.kill(wrapper, signal.SIGKILL)
        wait_until(lambda: procs.proc_stat(wrapper) is None or procs.proc_stat(wrapper)[0] == "Z", 2)
        doc = disk_status(pod, "reuse")
        doc.update(wrapper_pid=stranger.pid, pid=stranger.pid, pgid=stranger.pid)
        (d / "status.json").write_text(json.dumps(doc))
        rows = {r.id: r for r in tracked.list_tasks(pod)}
        assert rows["reuse"].state == "lost"
        assert stranger.poll() is None  # the stranger is left alone
    finally:
        stranger.kill()
        stranger.wait()


def test_reboot_gives_lost(pod):
    tracked.start_task(pod, "boot", "sleep 67.5")
    d = tasks_dir(pod) / "boot"
    doc = disk_status(pod, "boot")
    doc["boot_id"] = "00000000-0000-0000-0000-000000000000"
    (d / "status.json").write_text(json.dumps(doc))
    st = tracked.task_status(pod, "boot")
    assert st.state == "lost" and "rebooted" in st.error


def test_pending_whose_launcher_died_becomes_lost(pod):
    d = tasks_dir(pod) / "never"
    d.mkdir(parents=True)
    procs.prepare(str(d), "never", "true")
    doc = disk_status(pod, "never")
    doc["created_at"] = "2020-01-01T00:00:00Z"
    (d / "status.json").write_text(json.dumps(doc))
    assert tracked.task_status(pod, "never").state == "lost"
    # a fresh pending one is left alone (its launcher may be working on it)
    d2 = tasks_dir(pod) / "fresh"
    d2.mkdir()
    procs.prepare(str(d2), "fresh", "true")
    assert tracked.task_status(pod, "fresh").state == "pending"


def test_corrupt_status_is_reported_and_left_as_it_is(pod):
    tracked.start_task(pod, "fine", "true")
    d = tasks_dir(pod) / "broken"
    d.mkdir()
    (d / "status.json").write_text("{not json")
    rows = {r.id: r for r in tracked.list_tasks(pod)}
    assert rows["broken"].state == "unknown" and "not valid JSON" in rows["broken"].error
    assert rows["fine"].state in ("running", "success")
    assert (d / "status.json").read_text() == "{not json"


def test_heartbeat_is_refreshed_while_running(pod):
    pod.call("task.run", id="hb", command="sleep 3", session="tt-tasks", heartbeat_secs=0.2)
    first = disk_status(pod, "hb")["heartbeat_at"]
    assert wait_until(lambda: disk_status(pod, "hb")["heartbeat_at"] > first, 2)
    tracked.kill_task(pod, "hb", grace_secs=0.2)


# ---------------------------------------------------------------- logs


def test_logs_follow_streams_lines_while_running(pod):
    gate = StreamGate("line1")
    tracked.start_task(pod, "talk", gate.script("for i in 2 3 4; do echo line$i; done"))
    pod.calls = 0
    st = tracked.task_logs(pod, "talk", follow=True, sink=gate.sink)
    gate.close()
    assert gate.text == "line1\nline2\nline3\nline4\n"  # no "not-streamed": line1 came while it ran
    assert st.state == "success" and pod.calls == 1
    assert "PODFLOW" not in gate.text


def test_logs_tail_and_follow_of_a_finished_task(pod):
    tracked.start_task(pod, "many", "seq 1 50")
    tracked.wait_task(pod, "many")
    out = []
    tracked.task_logs(pod, "many", tail=3, sink=out.append)
    assert "".join(out) == "48\n49\n50\n"
    out = []
    tracked.task_logs(pod, "many", sink=out.append)
    assert "".join(out).splitlines() == [str(i) for i in range(1, 51)]
    out = []
    tracked.task_logs(pod, "many", tail=2, follow=True, sink=out.append)
    assert "".join(out) == "49\n50\n"
    assert tracked.task_status(pod, "many", tail=2).log_tail == "49\n50\n"


def test_log_holding_the_protocol_markers_is_passed_through(pod):
    cmd = "echo '<<<PODFLOW-BEGIN>>>'; echo '{\"ok\": false}'; echo '<<<PODFLOW-END>>>'; sleep 0.2; echo after"
    tracked.start_task(pod, "sly", cmd)
    out = []
    st = tracked.task_logs(pod, "sly", follow=True, sink=out.append)
    assert st.state == "success"
    assert "".join(out) == '<<<PODFLOW-BEGIN>>>\n{"ok": false}\n<<<PODFLOW-END>>>\nafter\n'


# ---------------------------------------------------------------- list, one round trip


def test_200_tasks_listed_in_one_round_trip(pod):
    root = tasks_dir(pod)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(198):
        d = root / f"bulk-{i:03d}"
        d.mkdir()
        procs.prepare(str(d), d.name, f"echo {i}")
        procs.update_status(str(d), state="success", exit_code=0, started_at=utcnow(), finished_at=utcnow())
    tracked.start_task(pod, "live-a", "sleep 5")
    tracked.start_task(pod, "live-b", "exit 3")
    tracked.wait_task(pod, "live-b", check=False)
    pod.calls = 0
    rows = tracked.list_tasks(pod)
    assert pod.calls == 1
    assert len(rows) == 200
    by_id = {r.id: r for r in rows}
    assert by_id["live-a"].state == "running" and by_id["live-b"].exit_code == 3
    assert by_id["bulk-007"].state == "success" and by_id["bulk-007"].duration_secs is not None


def test_every_command_costs_one_exec(pod):
    counts = {}
    for name, fn in [
        ("run", lambda: tracked.start_task(pod, "one", "sleep 0.2")),
        ("status", lambda: tracked.task_status(pod, "one")),
        ("list", lambda: tracked.list_tasks(pod)),
        ("wait", lambda: tracked.wait_task(pod, "one")),
        ("logs", lambda: tracked.task_logs(pod, "one", sink=lambda t: None)),
        ("follow", lambda: tracked.task_logs(pod, "one", follow=True, sink=lambda t: None)),
        ("kill", lambda: tracked.kill_task(pod, "one")),
    ]:
        pod.calls = 0
        fn()
        counts[name] = pod.calls
    assert counts == dict.fromkeys(counts, 1)


# ---------------------------------------------------------------- input: ids, commands, env


@pytest.mark.parametrize("bad", ["a;b", "$(id)", "a b", "../x", "-rf", ".hidden", "x" * 129, "", "a`b`", "a\nb", "é"])
def test_ids_with_shell_metacharacters_are_refused(pod, bad):
    with pytest.raises(InputError):
        tracked.start_task(pod, bad, "true")
    assert pod.calls == 0  # refused before any remote exec
    # the agent refuses them too (a client that skipped the check)
    with pytest.raises(InputError):
        pod.call("task.run", id=bad, command="true")
    assert [p.name for p in tasks_dir(pod).glob("*")] == [] if tasks_dir(pod).exists() else True


def test_command_runs_exactly_as_written(pod, tmp_path):
    (tmp_path / "g1.txt").write_text("")
    (tmp_path / "g2.txt").write_text("")
    cmd = ("echo \"double $((1+2))\" 'single $HOME' \"$(echo sub)\" `echo back`\n"
           f"cd {tmp_path} && echo *.txt\n"
           "printf '%s|' \"a  b\" 'c\"d' \"e'f\"; echo\n"
           "cat <<'EOF'\nheredoc $NOT_EXPANDED \\n\nEOF\n"
           "echo \"$FROM_REMOTE_ENV\" \"$EXTRA\" \"$HOME\"")
    tracked.start_task(pod, "exact", cmd, env={"EXTRA": "x y;$(z)"})
    tracked.wait_task(pod, "exact")
    d = tasks_dir(pod) / "exact"
    assert (d / "command.sh").read_text() == cmd
    assert disk_status(pod, "exact")["command"] == cmd
    import pwd

    home = pwd.getpwuid(os.getuid()).pw_dir
    assert (d / "stdout.log").read_text().splitlines() == [
        "double 3 single $HOME sub back",
        "g1.txt g2.txt",
        'a  b|c"d|e\'f|',
        "heredoc $NOT_EXPANDED \\n",
        f"yes-it-is x y;$(z) {home}",
    ]


def test_env_values_are_on_no_command_line_and_in_no_file(pod, monkeypatch):
    monkeypatch.setenv("REMOTE_SSH_PASSWORD", "pw-canary-123")
    secret = "tok-canary-456"
    st = tracked.start_task(pod, "envy", "sleep 1; env > env.txt", env={"MY_TOKEN": secret},
                            workdir=str(Path(pod.outputs_dir)))
    wrapper = st.extra["wrapper_pid"]
    assert secret.encode() not in Path(f"/proc/{wrapper}/cmdline").read_bytes()
    assert secret not in subprocess.run(["ps", "axww", "-o", "args"], capture_output=True, text=True).stdout
    tracked.wait_task(pod, "envy")
    env_txt = (Path(pod.outputs_dir) / "env.txt").read_text()
    assert f"MY_TOKEN={secret}" in env_txt and "pw-canary-123" not in env_txt
    (Path(pod.outputs_dir) / "env.txt").unlink()
    for f in Path(pod.outputs_dir).rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert secret.encode() not in data and b"pw-canary-123" not in data, f


def test_workdir_missing_is_bad_input(pod, tmp_path):
    with pytest.raises(InputError):
        tracked.start_task(pod, "nowd", "true", workdir=str(tmp_path / "nope"))
    st = tracked.start_task(pod, "wd", "pwd", workdir=str(tmp_path))
    tracked.wait_task(pod, "wd")
    assert (tasks_dir(pod) / "wd" / "stdout.log").read_text().strip() == str(tmp_path)
    assert st.workdir == str(tmp_path)


def test_existing_id_is_refused_unless_force_which_keeps_a_backup(pod):
    tracked.start_task(pod, "again", "echo first")
    tracked.wait_task(pod, "again")
    with pytest.raises(InputError, match="already exists"):
        tracked.start_task(pod, "again", "echo second")
    st = tracked.start_task(pod, "again", "echo second", force=True)
    assert st.attempt == 2
    tracked.wait_task(pod, "again")
    assert (tasks_dir(pod) / "again" / "stdout.log").read_text() == "second\n"
    backups = list((tasks_dir(pod) / ".backup").glob("again.*"))
    assert len(backups) == 1 and (backups[0] / "stdout.log").read_text() == "first\n"
    assert [r.id for r in tracked.list_tasks(pod)] == ["again"]
    # a running task is not swept aside
    tracked.start_task(pod, "busy", "sleep 5")
    with pytest.raises(InputError, match="still running"):
        tracked.start_task(pod, "busy", "true", force=True)


# ---------------------------------------------------------------- concurrency


def _client(pod):
    from workflow.agent_client import AgentClient
    from workflow.transport.local import LocalTransport

    return AgentClient(LocalTransport(), pod.outputs_dir, python=pod.python)


def test_two_clients_at_once(pod):
    settings = tracked.TaskSettings(session="tt-tasks")
    results, errors = {}, []

    def start(name, task_id):
        try:
            results[name] = tracked.start_task(_client(pod), task_id, f"echo {name}", settings=settings)
        except Exception as exc:  # noqa: BLE001
            errors.append((name, exc))

    # different ids (the session does not exist yet: both race to create it)
    threads = [threading.Thread(target=start, args=(n, n)) for n in ("left", "right")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and set(results) == {"left", "right"}
    assert tracked.wait_task(pod, "left").ok and tracked.wait_task(pod, "right").ok

    # the same id: exactly one wins, the others are told it exists
    results.clear()
    threads = [threading.Thread(target=start, args=(f"c{i}", "same")) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(results) == 1 and len(errors) == 3
    assert all(isinstance(e, InputError) for _, e in errors)
    winner = next(iter(results))
    tracked.wait_task(pod, "same")
    assert (tasks_dir(pod) / "same" / "stdout.log").read_text() == f"{winner}\n"


# ---------------------------------------------------------------- without tmux (the runner's path)


def test_detached_launch_without_tmux(pod):
    doc = pod.call("task.run", id="bare", command="echo bare; sleep 0.2", no_tmux=True)
    assert doc["state"] == "running" and "tmux_window" not in doc
    assert tracked.wait_task(pod, "bare").ok
    assert (tasks_dir(pod) / "bare" / "stdout.log").read_text() == "bare\n"


def test_procs_primitives_drive_any_directory(tmp_path):
    """What the sweep runner does for each run: prepare + launch + wait, any dir."""
    d = tmp_path / "run-1"
    d.mkdir()
    procs.prepare(str(d), "run-1", "echo $WF_TASK_ID; exit 2", timeout_secs=5)
    from workflow.agent_client import agent_bundle

    pyz = tmp_path / "podagent.pyz"
    pyz.write_bytes(agent_bundle())
    sys_argv = sys.argv
    sys.argv = [str(pyz)]  # as inside the zipapp
    try:
        doc = procs.launch(str(d), env=procs.job_env({"A": "1"}), tmux=None)
    finally:
        sys.argv = sys_argv
    assert doc["state"] in ("running", "failed")
    doc, done = procs.wait(str(d), 5)
    assert done and doc["state"] == "failed" and doc["exit_code"] == 2
    assert (d / "stdout.log").read_text() == "run-1\n"


def test_the_bundle_carries_bytecode_for_this_python_and_source_for_any_other(tmp_path):
    """A python of this version imports the agent without compiling it; another one
    (the agent's oldest, 3.8, where this machine has it) compiles the source instead."""
    import glob
    import zipimport

    from workflow.agent_client import agent_bundle

    pyz = tmp_path / "podagent.pyz"
    pyz.write_bytes(agent_bundle())
    code = zipimport.zipimporter(f"{pyz}/podagent").get_code("podagent.state")
    assert code.co_filename == "podagent/state.py"  # from the bundled .pyc (compiled here it names the zip)
    request = json.dumps({"outputs_dir": str(tmp_path / "out")})
    others = sorted(glob.glob("/root/.pyenv/versions/3.8*/bin/python3"))[:1]
    for python in [sys.executable] + others:
        r = subprocess.run([python, str(pyz), "state.read"], input=request, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and '"state": "INIT"' in r.stdout, (python, r.stderr)


def test_an_agent_starts_without_site_packages_and_imports_only_its_ops_module(tmp_path):
    """Every op's python start is the agent's fixed cost: the engine starts it with -S (no
    .pth file of the pod's site-packages runs) and it imports the module of its op alone;
    every op and command the agent has is mapped to its module (else it is looked up in all)."""
    import importlib
    import re

    from workflow.agent import __main__ as entry
    from workflow.agent_client import AgentClient
    from workflow.transport.local import LocalTransport

    for name in entry.MODULES:
        module = importlib.import_module(f"workflow.agent.{name}")
        assert all(entry.OP_MODULES[op.split(".")[0]] == name for op in module.OPS), name
        assert all(entry.COMMAND_MODULES[c] == name for c in getattr(module, "COMMANDS", {})), name
    python = tmp_path / "python"  # records how the engine starts it, then runs it so, telling its imports
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/argv\nexec {sys.executable} -X importtime "$@"\n')
    python.chmod(0o755)
    agent = AgentClient(LocalTransport(), str(tmp_path / "out"), python=str(python))
    agent.transport.write_file_atomic(agent.agent_path, b"", mode=0o644)  # its first call installs it
    (tmp_path / "out" / "_control" / "agent" / Path(agent.agent_path).name).unlink()
    assert agent.call("state.read")["state"] == "INIT"
    assert (tmp_path / "argv").read_text().splitlines()[-1].startswith(f"-S {agent.agent_path} state.read")
    res = agent.transport.run(agent.argv("state.read"), input=b"{}")
    imported = re.findall(r"\| +(\S+)$", res.stderr, re.M)  # (importlib's own imports are not listed)
    assert "podagent.__main__" in imported and "site" not in imported, res.stderr
    assert not {"podagent.procs", "podagent.job_status", "podagent.metrics", "podagent.net"} & set(imported), imported


# ---------------------------------------------------------------- the CLI


def _wf(project, *args, timeout=30):
    env = dict(os.environ)
    return subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_exit_codes_and_json(pod, project):
    r = _wf(project, "task-run", "--id", "c1", "--cmd", "echo hello", "--env", "A=1")
    assert r.returncode == 0 and r.stdout.strip() == "c1", r.stderr
    r = _wf(project, "task-wait", "--id", "c1")
    assert r.returncode == 0, r.stderr
    r = _wf(project, "task-run", "--id", "c1", "--cmd", "true")
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = _wf(project, "task-run", "--id", "x;rm -rf /", "--cmd", "true")
    assert r.returncode == 2
    _wf(project, "task-run", "--id", "c2", "--cmd", "echo boom; exit 9")
    r = _wf(project, "task-wait", "--id", "c2")
    assert r.returncode == 1 and "boom" in r.stderr
    _wf(project, "task-run", "--id", "c3", "--cmd", "sleep 300")
    r = _wf(project, "task-wait", "--id", "c3", "--timeout-secs", "0.3")
    assert r.returncode == 5
    r = _wf(project, "task-list", "--json")
    doc = json.loads(r.stdout)
    assert [t["id"] for t in doc["tasks"]] == ["c1", "c2", "c3"]
    assert [t["state"] for t in doc["tasks"]] == ["success", "failed", "running"]
    r = _wf(project, "task-status", "--id", "c2", "--json")
    assert json.loads(r.stdout)["exit_code"] == 9 and "boom" in json.loads(r.stdout)["log_tail"]
    r = _wf(project, "task-kill", "--id", "c3")
    assert r.returncode == 0 and "cancelled" in r.stdout
    r = _wf(project, "task-logs", "--id", "c1")
    assert r.stdout == "hello\n"
    r = _wf(project, "task-status", "--id", "nosuch")
    assert r.returncode == 2 and "no task" in r.stderr
