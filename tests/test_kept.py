"""The kept connection (``workflow/transport/kept/``) against a real sshd: later commands
open no new SSH login, it ends by itself when idle, only its user can use it, a dead or
wedged one is routed around, streaming and Ctrl-C go through it. The warm CLI server
(``workflow/cli/zygote.py``, more in test_zygote.py) starts with it, so the warm
commands here go through both; it too ends when idle and refuses another user."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow.cli import zygote
from workflow.transport.kept import client as kept
from workflow.transport.kept import wire

pytestmark = pytest.mark.ssh

WF = str(Path(sys.executable).with_name("wf"))
#: What a fallback may cost on top of a command: the health check plus a direct login,
#: on a loaded 2-core machine.
FALLBACK_BOUND = kept.HEALTH_SECS + 15


def wf(project, *args, env=None, timeout=90):
    return subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def lock_files(project):
    return sorted((project / ".podflow" / "kept").glob("*.lock"))


def server_pid(project):
    """The running kept server's pid (waits for it to be up and answering)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for lock in lock_files(project):
            pid, _ = kept._owner(lock)
            if pid and lock.with_suffix(".sock").exists():
                try:
                    kept._ask(lock.with_suffix(".sock"), "ping")
                    return pid
                except (kept._Unavailable, socket.timeout):
                    pass
        time.sleep(0.05)
    raise AssertionError("no kept connection came up")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def gone_within(pid, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def zygote_pid(project):
    """The project's warm CLI server's pid (``workflow/cli/zygote.py``), once it listens."""
    from workflow import unixsock
    from workflow.cli import entry

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = zygote.running(project)
        try:
            sock, listener = unixsock.connect(project / entry.DIR / entry.SOCKET, 5)
            sock.close()
            if listener == pid:
                return pid
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("no warm CLI server came up")


def zygote_served(project):
    """The commands the warm CLI server ran so far (its log's lines)."""
    log = project / ".podflow" / "cli" / "zygote.log"
    return [ln.split("serving ", 1)[1].split(" (")[0] for ln in log.read_text().splitlines()
            if "] serving " in ln and "serving the CLI" not in ln]


@pytest.fixture
def warm(ssh_pod, project):
    """A project whose first command left a kept connection and a warm CLI server running
    (later commands go through both)."""
    ssh_pod.write_config(project)
    r = wf(project, "fsm-status")
    assert r.returncode == 0, r.stderr
    pid = server_pid(project)
    zygote_pid(project)
    return ssh_pod, project, pid


def test_second_and_later_commands_open_no_new_login(warm):
    pod, project, pid = warm
    logins = pod.accepted_logins()
    assert logins == 2  # the first command's own, and the kept connection's
    cold = json.loads(wf(project, "fsm-status", "--json").stdout)
    r = wf(project, "task-run", "--id", "t1", "--cmd", "echo hello-warm; exit 3")
    assert r.returncode == 0, r.stderr
    r = wf(project, "task-wait", "--id", "t1", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["exit_code"] == 3  # exit codes hold through it
    listed = json.loads(wf(project, "task-list", "--json").stdout)
    assert [t["id"] for t in (listed["tasks"] if isinstance(listed, dict) else listed)] == ["t1"]
    assert json.loads(wf(project, "fsm-status", "--json").stdout) == cold
    r = wf(project, "remote-exec", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7 and r.stdout == "out\nerr\n"
    assert pod.accepted_logins() == logins
    assert alive(pid)


def test_a_warm_command_does_not_import_the_ssh_stack(warm):
    pod, project, _ = warm
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write('SSH-STACK:%s\\n' % sorted("
            "m for m in ('paramiko', 'fabric') if m in sys.modules)))\n"
            "from workflow.cli.main import main\n"
            "sys.argv = ['wf', 'fsm-status', '--json']\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SSH-STACK:[]" in r.stderr
    assert json.loads(r.stdout)["state"] == "INIT"


def test_idle_server_ends_and_leaves_no_process(ssh_pod, project):
    ssh_pod.write_config(project, pod__keepalive_secs=2)
    assert wf(project, "fsm-status").returncode == 0
    pid, cli = server_pid(project), zygote_pid(project)
    assert gone_within(pid, 15) and gone_within(cli, 15)
    sock = lock_files(project)[0].with_suffix(".sock")
    assert not sock.exists() and not (project / ".podflow" / "cli" / "zygote.sock").exists()
    assert "ended: idle 2s" in (project / ".podflow" / "cli" / "zygote.log").read_text()


def test_keepalive_0_keeps_nothing(ssh_pod, project):
    ssh_pod.write_config(project, pod__keepalive_secs=0)
    for _ in range(2):
        assert wf(project, "fsm-status").returncode == 0
    time.sleep(1)
    assert lock_files(project) == [] and ssh_pod.accepted_logins() == 2


def test_disconnect_ends_it_now_and_the_next_command_reconnects(warm):
    pod, project, pid = warm
    r = wf(project, "disconnect")
    assert r.returncode == 0 and "ended 1 kept connection" in r.stdout
    assert gone_within(pid, 5)
    before = pod.accepted_logins()
    assert wf(project, "fsm-status").returncode == 0
    assert pod.accepted_logins() == before + 1
    assert server_pid(project) != pid


def test_pod_down_ends_it(warm):
    pod, project, pid = warm
    r = wf(project, "pod-down")  # an ssh host cannot be stopped by podflow: refused, but the connection ends
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert gone_within(pid, 5)
    time.sleep(0.5)
    assert all(kept._owner(lock)[0] is None for lock in lock_files(project))  # and none was left anew


def test_socket_is_private_and_refuses_another_user(warm, tmp_path):
    pod, project, pid = warm
    directory = project / ".podflow" / "kept"
    sock = lock_files(project)[0].with_suffix(".sock")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == os.getuid()
    # Even past the file modes (a hard link in an open directory, mode 0666) the server
    # refuses a caller of another uid: it checks SO_PEERCRED.
    cli_dir = project / ".podflow" / "cli"
    cli_sock = cli_dir / "zygote.sock"  # the warm CLI server's: the same rules
    assert stat.S_IMODE(cli_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(cli_sock.stat().st_mode) == 0o600 and cli_sock.stat().st_uid == os.getuid()
    shared = Path(f"/tmp/wf-warm-{os.getpid()}-{pod.id}")
    shared.mkdir(mode=0o755)
    try:
        for n, target in enumerate((sock, cli_sock)):
            link = shared / f"s{n}.sock"
            os.link(target, link)
            os.chmod(link, 0o666)
            probe = ("import socket, struct, sys\n"
                     "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
                     "body = b'{\"op\": \"exec\", \"command\": \"id\", \"cred\": \"\"}'\n"
                     "try:\n"
                     "    s.sendall(struct.pack('!cI', b'Q', len(body)) + body)\n"
                     "    answer = s.recv(100)\n"
                     "except (BrokenPipeError, ConnectionResetError):\n"
                     "    answer = b''\n"
                     "print('answer:', answer)\n")
            r = pod.run_as_user(["/usr/bin/python3", "-c", probe, str(link)])
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == "answer: b''"  # closed without a word
            os.chmod(link, 0o600)
    finally:
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()
    for log in (next(directory.glob("*.log")), cli_dir / "zygote.log"):
        assert f"refused a caller of uid {pod.uid}" in log.read_text()
    assert alive(pid) and wf(project, "fsm-status").returncode == 0


def test_a_killed_server_falls_back_within_a_bound(warm):
    pod, project, pid = warm
    os.kill(pid, signal.SIGKILL)
    assert gone_within(pid, 5)
    started = time.monotonic()
    r = wf(project, "fsm-status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "INIT", r.stderr
    assert time.monotonic() - started < FALLBACK_BOUND
    assert r.stderr == ""  # no visible difference but time
    assert server_pid(project) != pid  # and the direct command left a new one


def test_a_wedged_server_falls_back_within_a_bound(warm):
    pod, project, pid = warm
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = wf(project, "task-list", "--json")
        took = time.monotonic() - started
        assert r.returncode == 0, r.stderr
        assert took < FALLBACK_BOUND
        assert r.stderr == ""
        assert gone_within(pid, 5)  # the wedged one was ended (ours: checked by pid and cmdline)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)


def test_two_concurrent_commands_share_it(warm):
    pod, project, pid = warm
    logins = pod.accepted_logins()
    procs = [subprocess.Popen([WF, "remote-exec", f"for i in 1 2 3; do echo c{n}-$i; sleep 0.2; done"],
                              cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    for n, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, err
        assert out == "".join(f"c{n}-{i}\n" for i in (1, 2, 3))
    assert pod.accepted_logins() == logins


def test_follow_streams_and_ctrl_c_ends_the_remote_side(warm):
    """In a terminal (a tmux pane): lines arrive while the task runs, and Ctrl-C (which
    the terminal sends to ``wf``, and ``wf`` on to the warm server's child running the
    command) ends the follow on the pod, exit 130."""
    from test_watch import Pane

    pod, project, pid = warm
    assert wf(project, "task-run", "--id", "talk",
              "--cmd", "for i in $(seq 1 200); do echo tick$i; sleep 0.1; done").returncode == 0
    logins = pod.accepted_logins()
    pane = Pane(f"kept-follow-{os.getpid()}", project)
    try:
        pane.tmux("send-keys", "-t", "w", f"{WF} task-logs --id talk --follow; echo EXIT=$?", "Enter")
        pane.wait(lambda t: t.count("tick") >= 3, "lines while the task runs", timeout=30)

        def cmdline(pid):
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                return b""

        def followers():
            return [p for p in pod.user_pids() if b"task.logs" in cmdline(p)]

        assert followers(), "the follow runs on the pod"
        pane.tmux("send-keys", "-t", "w", "C-c")
        done = pane.wait(lambda t: re.search(r"EXIT=\d", t), "the follow to end", timeout=15)
        assert "EXIT=130" in done and "Traceback" not in done, done
    finally:
        pane.kill()
    deadline = time.monotonic() + 10
    while followers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert followers() == []  # the remote side ended, as with a direct connection
    assert zygote_served(project)[-1] == "task-logs"  # it ran in the warm server's child
    r = wf(project, "task-status", "--id", "talk", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "running"  # the task itself goes on
    assert pod.accepted_logins() == logins and alive(pid)
    wf(project, "task-kill", "--id", "talk")


def test_time_out_through_it(warm):
    pod, project, _ = warm
    r = wf(project, "remote-exec", "--timeout-secs", "1", "sleep 30")
    assert r.returncode == 124 and "timed out after 1" in r.stderr


def test_a_changed_pin_ends_it(warm):
    pod, project, pid = warm
    pins = project / ".podflow" / "known_hosts"
    pins.write_text("")  # the user removed the pin (e.g. ssh-keygen -R): the next login pins afresh
    r = wf(project, "fsm-status")
    assert r.returncode == 0 and "pinned host key" in r.stderr, r.stderr
    assert gone_within(pid, 5)


def test_a_new_endpoint_is_another_connection(warm, ssh_client_keys, ssh_session_dir):
    from sshd import SshPod

    pod, project, pid = warm
    other = SshPod(ssh_client_keys, ssh_session_dir).start()
    try:
        other.write_config(project)
        assert wf(project, "fsm-status").returncode == 0
        assert gone_within(pid, 10)  # the old endpoint's connection ended
        new = server_pid(project)
        assert new != pid and other.accepted_logins() == 2
    finally:
        other.cleanup()


def test_long_socket_paths_work(ssh_pod, tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    ssh_pod.write_config(deep)
    assert wf(deep, "fsm-status").returncode == 0
    server_pid(deep)
    sock = lock_files(deep)[0].with_suffix(".sock")
    assert len(str(sock)) > 108
    assert wf(deep, "fsm-status").returncode == 0 and ssh_pod.accepted_logins() == 2
    wf(deep, "disconnect")


def test_frames_round_trip():
    a, b = socket.socketpair()
    with a, b:
        wire.send(a, b"O", b"\x00\xffbytes")
        wire.send_json(a, b"S", {"code": 3})
        assert wire.recv(b) == (b"O", b"\x00\xffbytes")
        assert wire.recv(b) == (b"S", b'{"code": 3}')
        a.close()
        with pytest.raises(wire.Closed):
            wire.recv(b)


def test_rsync_goes_through_it_too(warm, tmp_path):
    pod, project, pid = warm
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "b.txt").write_text("hello\n")
    logins = pod.accepted_logins()
    r = wf(project, "push-data", str(src), "--json")
    assert r.returncode == 0, r.stderr
    assert (pod.remote_dir / "data" / "data" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (pod.remote_dir / "data" / "data" / "sub" / "b.txt").read_text() == "hello\n"
    assert pod.accepted_logins() == logins  # rsync's remote shell was the kept connection
    # a dead kept connection: rsync gets its own ssh, as without one
    os.kill(pid, signal.SIGKILL)
    assert gone_within(pid, 5)
    (src / "c.txt").write_text("more\n")
    r = wf(project, "push-data", str(src), "--json")
    assert r.returncode == 0, r.stderr
    assert (pod.remote_dir / "data" / "data" / "c.txt").read_text() == "more\n"


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _agent_command(pid):
    """A podagent's op or command (the word after its .pyz), or None."""
    args = _cmdline(pid)
    return next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg.endswith(b".pyz")), None)


def served_agents(pod, settle=True):
    """PIDs of the pod's long-lived agents (``podagent serve``); with ``settle``, once the
    set stopped changing (a direct command's own agent ends when its connection closes)."""
    def now():
        return sorted(p for p in pod.user_pids() if _agent_command(p) == b"serve" and alive(p))
    seen, deadline = now(), time.monotonic() + 10
    while settle and time.monotonic() < deadline:
        time.sleep(0.3)
        again = now()
        if again == seen:
            break
        seen = again
    return seen


def test_a_long_lived_agent_serves_later_commands_and_reads_fresh_state(warm):
    pod, project, pid = warm
    assert wf(project, "fsm-status").returncode == 0
    agents = served_agents(pod)
    assert len(agents) == 1  # the kept connection's one agent (the first command's ended with it)
    logins = pod.accepted_logins()
    state = pod.remote_dir / "outputs" / "_control" / "workflow_state.json"
    for name in ("CHECKED_OUT", "BOOTSTRAPPED"):  # same size, same second: read afresh all the same
        pod.run_as_user(["/usr/bin/python3", "-c", "import json, sys; json.dump({'state': sys.argv[2], "
                         "'updated_at': '2026-01-01T00:00:00Z', 'history': []}, open(sys.argv[1], 'w'))",
                         str(state), name], check=True)
        r = wf(project, "fsm-status", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["state"] == name, r.stderr
    assert wf(project, "task-list", "--json").returncode == 0
    r = wf(project, "fsm-status", "--json", "--pod", "nope")
    assert r.returncode == 2  # errors hold through it
    assert served_agents(pod) == agents and pod.accepted_logins() == logins


def test_a_killed_pod_agent_is_replaced_and_an_interrupted_op_ends_its_agent(warm):
    pod, project, pid = warm
    assert wf(project, "fsm-status").returncode == 0
    first = served_agents(pod)
    for agent in first:
        os.kill(agent, signal.SIGKILL)
    r = wf(project, "fsm-status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "INIT" and r.stderr == ""
    second = served_agents(pod)
    assert len(second) == 1 and not set(second) & set(first)
    # Ctrl-C during an op that blocks on the pod (task-wait): 130, and the remote side ends
    assert wf(project, "task-run", "--id", "long", "--cmd", "sleep 120").returncode == 0
    (busy,) = served_agents(pod)

    def bytes_read():
        text = Path(f"/proc/{busy}/io").read_text()
        return int(text.split("rchar:")[1].split()[0])

    before = bytes_read()
    proc = subprocess.Popen([WF, "task-wait", "--id", "long"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while bytes_read() == before and time.monotonic() < deadline:
        time.sleep(0.05)  # until the agent read the wait's request
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130 and "Traceback" not in err
    assert gone_within(busy, 15)  # its channel was closed: the wait ended early, and the agent with it
    r = wf(project, "task-status", "--id", "long", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "running" and r.stderr == ""
    assert alive(pid)
    wf(project, "task-kill", "--id", "long")
