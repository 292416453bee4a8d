"""Secrets: a real flow with a password login and fake API keys in the environment;
afterwards no file (HOME, the project, the pod user's home and outputs, sshd's logs),
no command output, no process command line seen during the run (``/proc/*/cmdline``
of every process, sampled all along) and no environment of the pod's processes holds
any of them."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from figures import record
from relhelpers import sweep_project, wf_proc

pytestmark = pytest.mark.ssh


class ProcWatch:
    """Samples ``/proc/*/cmdline`` of every process (and the environment of the pod
    user's processes) until stopped."""

    def __init__(self, pod_uid: int):
        self.pod_uid = pod_uid
        self.cmdlines, self.environs = set(), set()
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    self.cmdlines.add(Path(entry.path, "cmdline").read_bytes())
                    if os.stat(entry.path).st_uid == self.pod_uid:
                        self.environs.add(Path(entry.path, "environ").read_bytes())
                except OSError:
                    pass
            self.samples += 1
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def _files_under(root: Path, skip=()):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                yield p


def test_no_secret_leaks_anywhere(ssh_pod, project, isolated_home, monkeypatch):
    secrets = {
        "REMOTE_SSH_PASSWORD": ssh_pod.password,
        "VAST_API_KEY": f"vast-leak-{uuid.uuid4().hex}",
        "RUNPOD_API_KEY": f"runpod-leak-{uuid.uuid4().hex}",
        "LIUM_API_KEY": f"lium-leak-{uuid.uuid4().hex}",
        "WANDB_API_KEY": f"wandb-leak-{uuid.uuid4().hex}",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    ssh_pod.authorize_key(False)  # password-only pod
    sweep_project(ssh_pod, project, [("s1", "sleep=0.2"), ("s2", "sleep=0.2")],
                  pod__identity_file=str(project / "no-such-key"), pod__connect_timeout_secs=5)
    data = project / "data" / "ds"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("data\n")
    env = dict(os.environ, **secrets)
    flow = [
        ("config-show",), ("config-show", "--json"), ("check-connection",), ("remote-exec", "echo hi; env | sort"),
        ("task-run", "--id", "envdump", "--cmd", "env > \"$WF_TASK_DIR/env.txt\"; ps auxww; echo done"),
        ("task-wait", "--id", "envdump"), ("task-logs", "--id", "envdump"), ("task-list", "--json"),
        ("task-status", "--id", "envdump", "--json"), ("fsm-status", "--json"),
        ("push-data", str(data)), ("sweep-start",), ("sweep-wait", "--timeout-secs", "60"),
        ("sweep-status", "--json"), ("fetch-run", "s1"), ("fetch-all",),
        ("fsm-reset", "CHECKED_OUT", "--reason", "secrets test"),
    ]
    outputs = []
    with ProcWatch(ssh_pod.uid) as watch:
        for argv in flow:
            r = wf_proc(*argv, cwd=project, env=env, timeout=120)
            assert r.code == 0, (argv, r.text)
            outputs.append((argv, r.text))
    assert (ssh_pod.remote_dir / "outputs" / "_tasks" / "envdump" / "env.txt").exists()
    leaks = []
    for argv, text in outputs:
        leaks += [f"output of {argv[0]}: {name}" for name, v in secrets.items() if v in text]
    # files: HOME, the project, the pod user's home (other pods' dirs left alone), sshd's dir
    others = {str(p) for p in (ssh_pod.home / "wft").iterdir() if p != ssh_pod.remote_dir}
    files = 0
    for root, skip in ((isolated_home, ()), (project, ()), (ssh_pod.home, others), (ssh_pod.dir, ())):
        for p in _files_under(root, skip):
            files += 1
            try:
                blob = p.read_bytes()
            except OSError:
                continue
            leaks += [f"file {p}: {name}" for name, v in secrets.items() if v.encode() in blob]
    for cmdline in watch.cmdlines:
        leaks += [f"cmdline {cmdline[:80]!r}: {name}" for name, v in secrets.items() if v.encode() in cmdline]
    for environ in watch.environs:  # processes on the pod, as the pod user
        leaks += [f"pod process environment: {name}" for name, v in secrets.items()
                  if name != "WANDB_API_KEY" and v.encode() in environ]
    assert watch.samples > 20 and files > 20
    record("secrets", f"{len(flow)} commands, {files} files, {len(watch.cmdlines)} distinct command lines "
           f"({watch.samples} /proc samples), {len(watch.environs)} pod process environments searched",
           count=len(secrets), leaks=len(leaks))
    assert not leaks, leaks


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (REPO / ".venv-torch" / "bin" / "torchrun").exists(), reason="needs .venv-torch")
def test_the_whole_demo_leaks_no_secret(tmp_path, isolated_home):
    """SPEC §2 over the whole workflow: `wf demo` (pod-up .. fetch-all, real torchrun)
    with a password and fake API keys in the environment."""
    import subprocess
    import sys

    secrets = {name: f"{name.lower()}-leak-{uuid.uuid4().hex}" for name in
               ("REMOTE_SSH_PASSWORD", "VAST_API_KEY", "RUNPOD_API_KEY", "LIUM_API_KEY", "WANDB_API_KEY")}
    demo_dir = tmp_path / "demo"
    env = dict(os.environ, PODFLOW_DEMO_DIR=str(demo_dir), **secrets)
    wf = str(Path(sys.executable).with_name("wf"))
    with ProcWatch(os.getuid()) as watch:
        proc = subprocess.run([wf, "demo", "--python", str(REPO / ".venv-torch" / "bin" / "python")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    leaks = [f"output: {n}" for n, v in secrets.items() if v in proc.stdout + proc.stderr]
    files = 0
    for root in (isolated_home, demo_dir):
        for p in _files_under(root):
            files += 1
            try:
                blob = p.read_bytes()
            except OSError:
                continue
            leaks += [f"file {p}: {n}" for n, v in secrets.items() if v.encode() in blob]
    for cmdline in watch.cmdlines:
        leaks += [f"cmdline {cmdline[:80]!r}: {n}" for n, v in secrets.items() if v.encode() in cmdline]
    assert files > 50 and watch.samples > 20
    record("secrets-demo", f"wf demo: {files} files, {len(watch.cmdlines)} distinct command lines "
           f"({watch.samples} /proc samples) searched", count=len(secrets), leaks=len(leaks))
    assert not leaks, leaks
