"""SshTransport against a real sshd on loopback (tests/sshd.py): commands, files, rsync,
host-key pinning, retries and connection loss, at the library level."""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflow.config import load_config
from workflow.errors import ConnectionFailed, HostKeyMismatch
from workflow.transport.ssh import SshTransport, build_command, open_ssh_transport, quote_path
from workflow.transport.sshconfig import resolve_ssh_endpoint

pytestmark = pytest.mark.ssh


def open_for(pod, project, **overrides) -> SshTransport:
    pod.write_config(project, **overrides)
    cfg = load_config(cwd=project)
    return open_ssh_transport(cfg, resolve_ssh_endpoint(cfg))


@pytest.fixture
def ssh(ssh_pod, project):
    t = open_for(ssh_pod, project)
    yield t
    t.close()


# ---------------------------------------------------------------- commands


def test_key_login_and_one_connection(ssh, ssh_pod):
    for _ in range(3):
        res = ssh.run(["id", "-un"])
        assert res.ok and res.stdout.strip() == ssh_pod.user
    assert ssh.connects == 1
    assert ssh.describe() == f"{ssh_pod.user}@127.0.0.1:{ssh_pod.port}"


def test_socket_has_nodelay_and_curve25519_first(ssh):
    import socket

    ssh.connect()
    t = ssh._conn.transport
    assert t.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert t.get_security_options().kex[0].startswith("curve25519-sha256")


ODD = ["a b", "'single'", '"double"', "$(echo pwned)", "`echo pwned`", "$HOME", "*", "x;y|z&", "\\", "",
       "new\nline", "tab\there", "é ünï", "-n", "~/not-expanded", "--"]


def test_argv_arrives_literally(ssh):
    res = ssh.run(["printf", "%s\\n", *ODD])
    assert res.ok, res.stderr
    assert res.stdout == "".join(a + "\n" for a in ODD)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                        max_size=20), min_size=1, max_size=4))
def test_argv_property(ssh, words):
    res = ssh.run(["printf", "%s\\0", *words])
    assert res.ok
    assert res.stdout.split("\0")[:-1] == words


def test_env_cwd_stdin_and_exit_code(ssh, ssh_pod):
    (ssh_pod.remote_dir / "d ir").mkdir()
    res = ssh.run(["sh", "-c", 'printf "%s|" "$A" "$B" "$PWD"; cat; exit 3'],
                  env={"A": "x y", "B": "$(no)"}, cwd=f"~/wft/{ssh_pod.id}/d ir", input=b"from stdin")
    assert res.exit_code == 3
    assert res.stdout == f"x y|$(no)|{ssh_pod.remote_dir}/d ir|from stdin"


def test_stderr_stream_and_timeout(ssh):
    seen = []
    res = ssh.run(["sh", "-c", "echo one; echo err >&2; sleep 0.3; echo two"], on_stdout=seen.append)
    assert res.stdout == "one\ntwo\n" and res.stderr == "err\n"
    assert "".join(seen) == res.stdout and len(seen) >= 2  # arrived in pieces, as it came
    started = time.monotonic()
    res = ssh.run(["sleep", "10"], timeout=0.5)
    assert res.exit_code == 124 and time.monotonic() - started < 3
    assert ssh.run(["true"]).ok  # the connection survives a timed-out command


def test_large_stdin_and_stdout(ssh):
    blob = bytes(range(256)) * 8192  # 2 MiB, every byte value
    code, out, _ = ssh.exec_command("cat", input=blob)
    assert code == 0 and out == blob


def test_connection_drop_mid_command_then_reconnect(ssh, ssh_pod):
    assert ssh.run(["true"]).ok
    threading.Timer(0.5, ssh_pod.drop_connections).start()
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="lost"):
        ssh.run(["sleep", "30"])
    assert time.monotonic() - started < 5
    assert ssh.run(["echo", "back"]).stdout == "back\n"  # the next command reconnects
    assert ssh.connects == 2


def test_build_command_quoting():
    assert build_command(["a b"], {"K": "v w"}, "~/x y") == "cd -- \"$HOME\"/'x y' && env K='v w' 'a b'"
    assert quote_path("~") == '"$HOME"' and quote_path("/a'b") == "'/a'\"'\"'b'"
    with pytest.raises(Exception):
        build_command(["x"], {"BAD-NAME": "1"})


# ---------------------------------------------------------------- files


def test_files_round_trip(ssh, ssh_pod, tmp_path):
    base = f"~/wft/{ssh_pod.id}"
    data = b"\x00binary\xff" * 1000
    ssh.write_file_atomic(f"{base}/deep/er/state.json", data, mode=0o600)
    target = ssh_pod.remote_dir / "deep/er/state.json"
    assert target.read_bytes() == data and oct(target.stat().st_mode & 0o777) == "0o600"
    assert target.stat().st_uid == ssh_pod.uid
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]  # no temp left
    ssh.write_file_atomic(f"{base}/deep/er/state.json", b"v2")
    assert ssh.read_file(f"{base}/deep/er/state.json") == b"v2"
    assert ssh.read_file(str(target)) == b"v2"  # absolute paths too
    with pytest.raises(FileNotFoundError):
        ssh.read_file(f"{base}/missing")

    local = tmp_path / "up.bin"
    local.write_bytes(data)
    local.chmod(0o750)
    ssh.put(local, f"{base}/put dir/up.bin")
    up = ssh_pod.remote_dir / "put dir/up.bin"
    assert up.read_bytes() == data and oct(up.stat().st_mode & 0o777) == "0o750"
    ssh.get(f"{base}/put dir/up.bin", tmp_path / "down/again.bin")
    assert (tmp_path / "down/again.bin").read_bytes() == data
    with pytest.raises(FileNotFoundError):
        ssh.get(f"{base}/nope", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


# ---------------------------------------------------------------- rsync


def _rsync(t: SshTransport, src: Path, remote: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["rsync", "-a", "-e", shlex.join(t.rsync_remote_shell()), f"{src}/", t.rsync_target(remote)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_rsync_through_remote_shell(ssh, ssh_pod, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b w.txt").write_text("beta")
    res = _rsync(ssh, src, f"~/wft/{ssh_pod.id}/synced")
    assert res.returncode == 0, res.stderr
    assert (ssh_pod.remote_dir / "synced/sub/b w.txt").read_text() == "beta"
    shell = ssh.rsync_remote_shell()
    assert "StrictHostKeyChecking=yes" in shell and "BatchMode=yes" in shell


def test_rsync_refuses_a_changed_host_key(ssh, ssh_pod, tmp_path):
    ssh.connect()  # pins
    ssh_pod.regenerate_host_key()
    (tmp_path / "src").mkdir()
    res = _rsync(ssh, tmp_path / "src", f"~/wft/{ssh_pod.id}/x")
    assert res.returncode != 0 and "host key" in res.stderr.lower()


def test_rsync_with_password_via_askpass(ssh_pod, project, tmp_path, monkeypatch):
    ssh_pod.authorize_key(False)
    monkeypatch.setenv("REMOTE_SSH_PASSWORD", ssh_pod.password)
    t = open_for(ssh_pod, project)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("via password")
    shell = t.rsync_remote_shell()
    assert ssh_pod.password not in " ".join(shell) and "BatchMode=yes" not in shell
    res = _rsync(t, src, f"~/wft/{ssh_pod.id}/pw")
    assert res.returncode == 0, res.stderr
    assert (ssh_pod.remote_dir / "pw/f").read_text() == "via password"
    t.close()


# ---------------------------------------------------------------- host keys, connect


def test_host_key_pinned_then_changed_key_refused(ssh_pod, project):
    t = open_for(ssh_pod, project)
    t.connect()
    kh = project / ".podflow/known_hosts"
    lines = kh.read_text().splitlines()
    assert lines == [f"[127.0.0.1]:{ssh_pod.port} " + " ".join(ssh_pod.host_pub_key.split()[:2])]
    t.close()
    t.connect()  # same key: accepted, not pinned twice
    assert kh.read_text().splitlines() == lines
    t.close()
    ssh_pod.regenerate_host_key()
    with pytest.raises(HostKeyMismatch) as err:
        t.connect()
    assert f"ssh-keygen -R '[127.0.0.1]:{ssh_pod.port}' -f .podflow/known_hosts" in str(err.value)
    assert err.value.exit_code == 4


def test_connect_retries_until_the_pod_listens(ssh_pod, project):
    t = open_for(ssh_pod, project, pod__connect_timeout_secs=8)
    ssh_pod.stop()
    threading.Timer(0.8, ssh_pod.start).start()
    started = time.monotonic()
    assert t.run(["true"]).ok
    assert 0.7 < time.monotonic() - started < 6
    t.close()


def test_auth_failure_is_not_retried(ssh_pod, project):
    ssh_pod.authorize_key(False)
    t = open_for(ssh_pod, project, pod__connect_timeout_secs=20)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="authentication failed"):
        t.connect()
    assert time.monotonic() - started < 3


def test_password_login_when_key_not_authorized(ssh_pod, project, monkeypatch):
    ssh_pod.authorize_key(False)
    monkeypatch.setenv("REMOTE_SSH_PASSWORD", ssh_pod.password)
    t = open_for(ssh_pod, project, pod__identity_file=str(project / "no-such-key"))
    assert t.run(["id", "-un"]).stdout.strip() == ssh_pod.user
    t.close()
    monkeypatch.setenv("REMOTE_SSH_PASSWORD", "not-the-password")
    with pytest.raises(ConnectionFailed, match="authentication failed") as err:
        t.connect()
    assert "not-the-password" not in str(err.value)


# ---------------------------------------------------------------- endpoint resolution


def test_host_spec_and_ssh_config_alias(ssh_pod, project, isolated_home):
    t = open_for(ssh_pod, project, pod__host=f"{ssh_pod.user}@127.0.0.1:{ssh_pod.port}", pod__port=None,
                 pod__user=None)
    assert t.describe() == f"{ssh_pod.user}@127.0.0.1:{ssh_pod.port}" and t.run(["true"]).ok
    t.close()
    (isolated_home / ".ssh").mkdir()
    (isolated_home / ".ssh/config").write_text(
        f"Host mypod\n  HostName 127.0.0.1\n  Port {ssh_pod.port}\n  User {ssh_pod.user}\n"
        f"  IdentityFile {ssh_pod.key_path}\n")
    t = open_for(ssh_pod, project, pod__host="mypod", pod__port=None, pod__user=None, pod__identity_file=None)
    assert t.describe() == f"{ssh_pod.user}@127.0.0.1:{ssh_pod.port}"
    assert t.identity_file == ssh_pod.key_path
    assert t.run(["id", "-un"]).stdout.strip() == ssh_pod.user
    t.close()
