"""The pod tasks through the real ``wf`` CLI (subprocesses) against a real sshd:
check-connection, remote-exec, setup-keys, exit codes, secrets kept out of files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

WF = str(Path(sys.executable).parent / "wf")

pytestmark = pytest.mark.ssh


def wf(project, *args, env=None, timeout=60):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([WF, *args], cwd=project, env=full, capture_output=True, text=True, timeout=timeout)


def fingerprint(pub_line: str) -> str:
    import base64
    import hashlib

    blob = base64.b64decode(pub_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ---------------------------------------------------------------- check-connection


def test_check_connection_text_and_json(ssh_pod, project):
    ssh_pod.write_config(project)
    res = wf(project, "check-connection")
    assert res.returncode == 0, res.stderr
    assert f"user: {ssh_pod.user}" in res.stdout and "gpus: none" in res.stdout
    assert "python: 3." in res.stdout and "disk free:" in res.stdout
    assert "pinned host key" in res.stderr  # first use
    res = wf(project, "check-connection", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # exactly one document on stdout
    assert doc["user"] == ssh_pod.user and doc["transport"] == "ssh"
    assert doc["gpus"] == [] and doc["gpu_summary"] == "none"
    assert doc["python"].startswith("3.") and doc["disk_free_bytes"] > 0
    assert doc["disk_path"] == str(ssh_pod.remote_dir)  # outputs dir not made yet: nearest parent
    assert "pinned" not in res.stderr


def test_check_connection_survives_a_noisy_bashrc(ssh_pod, project):
    rc = ssh_pod.home / ".bashrc"
    before = rc.read_text() if rc.exists() else None
    ssh_pod.write_config(project)
    try:
        noise = f'[ "$WF_TEST_POD" = {ssh_pod.id} ] && echo "user=IMPOSTOR"\n'
        rc.write_text(noise + (before or ""))  # first, before Debian's "not interactive: return"
        assert "IMPOSTOR" in wf(project, "remote-exec", "true").stdout  # the noise is real
        res = wf(project, "check-connection", "--json")
    finally:
        if before is None:
            rc.unlink()
        else:
            rc.write_text(before)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["user"] == ssh_pod.user


def test_closed_port_exits_4_within_the_timeout(ssh_pod, project):
    ssh_pod.write_config(project, pod__connect_timeout_secs=1.5)
    ssh_pod.stop()
    started = time.monotonic()
    res = wf(project, "check-connection")
    took = time.monotonic() - started
    assert res.returncode == 4, res.stderr
    assert "cannot reach" in res.stderr and "Traceback" not in res.stderr
    # it kept trying for the timeout, then gave up (the slack is wf's own start on a busy machine;
    # the default timeout, 30 s, would be far past it)
    assert 1.2 < took < 1.5 + 10


def test_changed_host_key_refused_with_repin_hint(ssh_pod, project):
    ssh_pod.write_config(project)
    assert wf(project, "check-connection").returncode == 0
    old = fingerprint(ssh_pod.host_pub_key)
    ssh_pod.regenerate_host_key()
    new = fingerprint(ssh_pod.host_pub_key)
    res = wf(project, "remote-exec", "true")
    assert res.returncode == 4
    hint = f"ssh-keygen -R '[127.0.0.1]:{ssh_pod.port}' -f .podflow/known_hosts"
    assert old in res.stderr and new in res.stderr and hint in res.stderr
    assert f"[127.0.0.1]:{ssh_pod.port}" in res.stderr and "Traceback" not in res.stderr
    # the hint really re-pins
    subprocess.run(shlex.split(hint), cwd=project, check=True, capture_output=True)
    assert wf(project, "remote-exec", "true").returncode == 0
    assert new.split(":")[1] not in (project / ".podflow/known_hosts").read_text()  # stored as key, not fp
    assert wf(project, "remote-exec", "true").returncode == 0


# ---------------------------------------------------------------- remote-exec


@pytest.mark.parametrize("cmd,code", [("exit 7", 7), ("true", 0), ("false", 1), ("exit 255", 255)])
def test_remote_exec_passes_exit_codes(ssh_pod, project, cmd, code):
    ssh_pod.write_config(project)
    res = wf(project, "remote-exec", cmd)
    assert res.returncode == code, res.stderr


def test_remote_exec_runs_through_the_pod_shell(ssh_pod, project):
    ssh_pod.write_config(project, remote__env={"GREETING": "hi there"})
    res = wf(project, "remote-exec", 'echo "$GREETING from $(id -un)"; echo oops >&2; exit 3')
    assert res.returncode == 3
    assert res.stdout == f"hi there from {ssh_pod.user}\noops\n"


def test_remote_exec_streams_output(ssh_pod, project):
    ssh_pod.write_config(project)
    proc = subprocess.Popen([WF, "remote-exec", "echo first; sleep 3; echo second"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    first = proc.stdout.readline()
    assert first == "first\n" and time.monotonic() - started < 2.5  # before the command ended
    assert proc.stdout.read() == "second\n" and proc.wait(10) == 0


# ---------------------------------------------------------------- passwords


def test_password_login_leaves_no_trace(ssh_pod, project, isolated_home, tmp_path):
    ssh_pod.authorize_key(False)
    ssh_pod.write_config(project, pod__identity_file=str(project / ".podflow/no-key"))
    env = {"REMOTE_SSH_PASSWORD": ssh_pod.password}
    assert wf(project, "check-connection").returncode == 4  # no key, no password
    res = wf(project, "check-connection", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["user"] == ssh_pod.user
    proc = subprocess.Popen([WF, "remote-exec", "sleep 1.5; echo done"], cwd=project, text=True,
                            env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.8)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # never on a command line (ps)
        try:
            assert ssh_pod.password.encode() not in cmdline.read_bytes()
        except OSError:
            pass
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and out == "done\n", err
    res = wf(project, "remote-exec", "echo nope", env={"REMOTE_SSH_PASSWORD": "wrong-" + ssh_pod.password})
    assert res.returncode == 4 and "authentication failed" in res.stderr
    for text in (res.stdout, res.stderr):
        assert ssh_pod.password not in text
    for where in (isolated_home, project, ssh_pod.home, ssh_pod.dir):
        found = subprocess.run(["grep", "-r", "-l", "-F", "-a", ssh_pod.password, str(where)],
                               capture_output=True, text=True)
        assert found.returncode == 1, f"password found in: {found.stdout}"


# ---------------------------------------------------------------- setup-keys


def test_setup_keys_without_password_prints_the_key(ssh_pod, project):
    key = project / ".podflow" / "id_new"
    ssh_pod.write_config(project, pod__identity_file=str(key))
    res = wf(project, "setup-keys")
    assert res.returncode == 0, res.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    lines = res.stdout.splitlines()
    assert "NO_PASSWORD_MODE" in lines
    start, end = lines.index("PUBLIC_KEY_START"), lines.index("PUBLIC_KEY_END")
    assert end == start + 2
    pub = (key.parent / "id_new.pub").read_text().strip()
    assert lines[start + 1] == pub and pub.startswith("ssh-ed25519 ")
    # no passphrase: ssh-keygen can read it without one
    derived = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(key)], capture_output=True, text=True)
    assert derived.returncode == 0 and derived.stdout.split()[:2] == pub.split()[:2]
    again = wf(project, "setup-keys")
    assert again.returncode == 0 and pub in again.stdout  # the same key, not a new one


def test_setup_keys_with_password_is_idempotent(ssh_pod, project):
    ssh_pod.authorize_key(False)
    key = project / ".podflow" / "id_pod"
    ssh_pod.write_config(project, pod__identity_file=str(key))
    env = {"REMOTE_SSH_PASSWORD": ssh_pod.password}
    auth = ssh_pod.home / ".ssh" / "authorized_keys"
    try:
        first = wf(project, "setup-keys", env=env)
        assert first.returncode == 0, first.stderr
        assert "installed" in first.stdout and "key login verified" in first.stdout
        second = wf(project, "setup-keys", env=env)
        assert second.returncode == 0 and "already installed" in second.stdout
        material = " ".join((key.parent / "id_pod.pub").read_text().split()[:2])
        assert sum(material in line for line in auth.read_text().splitlines()) == 1
        assert oct(auth.stat().st_mode & 0o777) == "0o600" and auth.stat().st_uid == ssh_pod.uid
        # the key alone now logs in
        res = wf(project, "remote-exec", "id -un")
        assert res.returncode == 0 and res.stdout.strip() == ssh_pod.user
    finally:
        if auth.exists() and key.with_suffix(".pub").exists():
            material = " ".join(key.with_suffix(".pub").read_text().split()[:2])
            auth.write_text("".join(ln for ln in auth.read_text().splitlines(True) if material not in ln))


# ---------------------------------------------------------------- provider local


def test_pod_tasks_on_the_local_provider(project, isolated_home):
    (project / "configs" / "workflow.yaml").write_text("pod:\n  provider: local\n")
    res = wf(project, "check-connection", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["transport"] == "local" and doc["python"].startswith("3.")
    assert wf(project, "remote-exec", "exit 5").returncode == 5
    res = wf(project, "setup-keys")
    assert res.returncode == 0 and "nothing to install" in res.stdout
    key = isolated_home / ".ssh" / "id_ed25519"
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_setup_keys_no_password_needs_no_pod(project):
    """A cloud pod not rented yet (no session): the key is made and printed for a dashboard."""
    key = project / "keys" / "id_cloud"
    (project / "configs" / "workflow.yaml").write_text(f"pod:\n  provider: runpod\n  identity_file: {key}\n")
    res = wf(project, "setup-keys")
    assert res.returncode == 0, res.stderr
    assert "NO_PASSWORD_MODE" in res.stdout and (key.parent / "id_cloud.pub").read_text().strip() in res.stdout
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
