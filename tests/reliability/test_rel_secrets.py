"""Secrets: a real flow with a password login and fake API keys in the environment;
afterwards no file (HOME, the project, the pod user's home and outputs, sshd's logs),
no command output, no process command line seen during the run (``/proc/*/cmdline``
of every process, sampled all along) and no environment of the pod's processes holds
any of them."""

from __future__ import annotations

import os
import uuid

import pytest

from figures import record
from leakcheck import ProcWatch, leaks_in_cmdlines, leaks_in_files
from relhelpers import sweep_project, wf_proc

pytestmark = pytest.mark.ssh


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
    # files: HOME, the project, the pod user's home, this pod's dir in it (not the other
    # pods' dirs beside it: tests running at once make and remove them), sshd's dir
    files, found = leaks_in_files(secrets, ((isolated_home, ()), (project, ()),
                                            (ssh_pod.home, {str(ssh_pod.home / "wft")}), (ssh_pod.remote_dir, ()),
                                            (ssh_pod.dir, ())))
    leaks += found + leaks_in_cmdlines(secrets, watch)
    for environ in watch.environs:  # processes on the pod, as the pod user
        leaks += [f"pod process environment: {name}" for name, v in secrets.items()
                  if name != "WANDB_API_KEY" and v.encode() in environ]
    assert watch.samples > 20 and files > 20
    record("secrets", f"{len(flow)} commands, {files} files, {len(watch.cmdlines)} distinct command lines "
           f"({watch.samples} /proc samples), {len(watch.environs)} pod process environments searched",
           count=len(secrets), leaks=len(leaks))
    assert not leaks, leaks

