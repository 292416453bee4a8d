"""bootstrap: prerequisites, bootstrap.script, the W&B script, the setup log, the state
machine — for real (tmux tracked tasks, real python -m venv, real dpkg), on the local
provider and over a loopback sshd. Mirrors ``workflow/prepare.py`` and
``workflow/agent/bootstrap.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow import progress
from workflow.agent import step_runner

WF = str(Path(sys.executable).with_name("wf"))
SYSTEM_PY = "/usr/bin/python3"


def wf(project, *args, check=None, env=None, timeout=180):
    full = dict(os.environ, **(env or {}))
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout, env=full)
    if check is not None:
        assert proc.returncode == check, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def write_config(project: Path, **sections) -> None:
    doc = {"project": "bt", "pod": {"provider": "local"}, "remote": {"python": SYSTEM_PY}}
    for key, value in sections.items():
        doc.setdefault(key, {}).update(value) if isinstance(value, dict) else doc.__setitem__(key, value)
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump(doc))


def outputs(project: Path) -> Path:
    return project / ".podflow" / "local-pod" / "outputs"


def fsm_state(project) -> dict:
    return json.loads(wf(project, "fsm-status", "--json", check=0).stdout)


@pytest.fixture
def pod(project):
    """A local pod in POD_READY (as after pod-up)."""
    write_config(project)
    wf(project, "fsm-reset", "POD_READY", "--reason", "test", check=0)
    return project


def test_milestone_prefix_is_shared_with_the_podagent():
    assert progress.MILESTONE_PREFIX == step_runner.MILESTONE


def test_milestone_filter_passes_whole_milestone_lines_from_any_chunking():
    text = "==> one: start\ndetail\n==> two: done\nnot ==> this\n==> three"
    for size in (1, 3, 7, len(text)):
        got = []
        filt = progress.MilestoneFilter(got.append)
        for i in range(0, len(text), size):
            filt.feed(text[i:i + size])
        filt.close()
        assert "".join(got) == "==> one: start\n==> two: done\n==> three\n"
    assert progress.level(None) == "milestones" and progress.level("QUIET") == "quiet"


def test_bootstrap_checks_runs_script_writes_setup_log_and_second_run_only_checks(pod, tmp_path):
    counter = tmp_path / "ran.txt"
    script = tmp_path / "bootstrap-pod.sh"
    script.write_text(f"echo 'bootstrap script says hi'\necho ran >> {counter}\n")
    write_config(pod, bootstrap={"script": str(script)})

    first = wf(pod, "bootstrap", "--progress", "realtime", check=0)
    assert "bootstrap script says hi" in first.stdout  # realtime: the script's own output
    assert "==> prereqs:" in first.stdout and "/usr/bin/git" in first.stdout
    assert counter.read_text() == "ran\n"
    doc = fsm_state(pod)
    assert doc["state"] == "BOOTSTRAPPED"
    assert doc["history"][-1]["from"] == "POD_READY" and doc["history"][-1]["trigger"] == "bootstrap"

    log = (outputs(pod) / "_control" / "setup.log").read_text()
    for needle in ("date: 20", "git: git version", "tmux: tmux", "rsync: rsync", f"remote.python: {SYSTEM_PY}",
                   "--- pip freeze", "--- nvidia-smi ---"):
        assert needle in log, needle
    assert "no GPU" in log or "NVIDIA-SMI" in log
    task_id = first.stdout.split("task ")[1].split()[0]
    assert task_id.startswith("bootstrap-") and (outputs(pod) / "_tasks" / task_id / "result.json").exists()

    second = wf(pod, "bootstrap", check=0)  # milestones (the default)
    assert "already done" in second.stdout and "only checked" in second.stdout
    assert "bootstrap script says hi" not in second.stdout  # milestones only
    assert all(ln.startswith(("==> ", "bootstrap:")) for ln in second.stdout.splitlines()), second.stdout
    assert counter.read_text() == "ran\n"  # not run again
    assert (outputs(pod) / "_control" / "setup.log").read_text() == log  # only checked
    assert fsm_state(pod)["history"][-1]["to"] == "BOOTSTRAPPED"

    script.write_text(script.read_text() + "echo changed\n")  # a changed script runs again
    quiet = wf(pod, "bootstrap", "--progress", "quiet", check=0)
    assert quiet.stdout.strip().count("\n") == 0 and quiet.stdout.startswith("bootstrap: BOOTSTRAPPED")
    assert counter.read_text() == "ran\nran\n"


def test_failing_bootstrap_script_shows_its_log_tail_and_keeps_the_state(pod, tmp_path):
    script = tmp_path / "bootstrap-pod.sh"
    script.write_text("echo 'step one ok'\necho 'E: disk quota exceeded' >&2\nexit 3\n")
    write_config(pod, bootstrap={"script": str(script)})
    res = wf(pod, "bootstrap", "--progress", "quiet", check=1)
    assert "step 'script'" in res.stderr and "exit 3" in res.stderr
    assert "E: disk quota exceeded" in res.stderr and "step one ok" in res.stderr
    assert "Traceback" not in res.stderr
    assert fsm_state(pod)["state"] == "POD_READY"

    write_config(pod, bootstrap={"script": str(tmp_path / "nope.sh")})
    res = wf(pod, "bootstrap", check=1)
    assert "does not exist on the pod" in res.stderr and "nope.sh" in res.stderr
    assert fsm_state(pod)["state"] == "POD_READY"


def test_missing_prerequisites_are_named_with_the_fix(pod, tmp_path):
    # The tasks' PATH (remote.env) holds git, python3 and dpkg-query but no tmux or rsync;
    # one configured apt package is not installed at all.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "python3", "dpkg-query", "apt-get"):
        (bin_dir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    write_config(pod, remote={"env": {"PATH": str(bin_dir)}},
                 bootstrap={"apt_packages": ["git", "tmux", "rsync", "python3-venv", "podflow-no-such-package"]})
    res = wf(pod, "bootstrap", check=1)
    err = res.stderr
    assert "step 'prereqs'" in err
    assert "tmux (command not found on PATH)" in err and "rsync (command not found on PATH)" in err
    assert "package podflow-no-such-package (not installed" in err
    assert "git (" not in err and "python3 -m venv" not in err  # what is there is not named
    assert "bootstrap.install_prereqs: true" in err
    assert "apt-get install -y podflow-no-such-package rsync tmux" in err
    assert fsm_state(pod)["state"] == "POD_READY"

    if os.geteuid() != 0:
        return
    # install_prereqs: apt really runs (tmux and rsync are installed on this machine, so
    # it needs no network) and bootstrap checks again: still not on the tasks' PATH.
    write_config(pod, remote={"env": {"PATH": str(bin_dir)}},
                 bootstrap={"install_prereqs": True, "apt_packages": ["git", "tmux", "rsync", "python3-venv"]})
    res = wf(pod, "bootstrap", "--progress", "realtime", check=1)
    assert "==> prereqs: installing tmux, rsync" in res.stdout
    assert "tmux is already the newest version" in res.stdout
    assert "missing on the pod: tmux (command not found on PATH)" in res.stderr
    assert fsm_state(pod)["state"] == "POD_READY"


def test_wandb_setup_runs_only_with_wandb_and_the_key_stays_out_of_files(pod, tmp_path):
    marker = tmp_path / "netrc-written"
    wandb = tmp_path / "set-wandb-api-key.sh"
    wandb.write_text(f'test -n "$WANDB_API_KEY" && echo "key of $(printf %s "$WANDB_API_KEY" | wc -c) chars" > {marker}\n')
    canary = "wandb-canary-0123456789abcdef"
    write_config(pod, bootstrap={"wandb_setup_script": str(wandb)})
    res = wf(pod, "bootstrap", "--progress", "realtime", check=0, env={"WANDB_API_KEY": canary})
    assert "sweep.wandb.enabled is false" in res.stdout and not marker.exists()

    write_config(pod, bootstrap={"wandb_setup_script": str(wandb)}, sweep={"wandb": {"enabled": True}})
    res = wf(pod, "bootstrap", "--progress", "realtime", check=0, env={"WANDB_API_KEY": canary})
    assert marker.read_text() == f"key of {len(canary)} chars\n"
    assert canary not in res.stdout + res.stderr
    for path in outputs(pod).rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def test_fsm_refusal_and_bad_flags_run_nothing(project):
    write_config(project)
    res = wf(project, "bootstrap", check=3)  # INIT: pod-up first
    assert "INIT" in res.stderr and "POD_READY" in res.stderr
    wf(project, "fsm-reset", "POD_READY", check=0)
    res = wf(project, "bootstrap", "--progress", "loud", check=2)
    assert "--progress must be one of realtime, milestones, quiet" in res.stderr
    assert not (outputs(project) / "_tasks").exists()


@pytest.mark.ssh
def test_bootstrap_over_ssh_detached_then_task_wait(ssh_pod, project):
    ssh_pod.write_config(project, remote__python=SYSTEM_PY)
    wf(project, "fsm-reset", "POD_READY", check=0)
    res = wf(project, "bootstrap", "--detach", check=0)
    task_id = res.stdout.splitlines()[0]
    assert task_id.startswith("bootstrap-") and f"wf task-wait --id {task_id}" in res.stdout
    wf(project, "task-wait", "--id", task_id, check=0)
    assert fsm_state(project)["state"] == "BOOTSTRAPPED"  # moved by the task itself
    log = ssh_pod.remote_dir / "outputs" / "_control" / "setup.log"
    assert f"user: {ssh_pod.user} " in log.read_text()
    again = wf(project, "bootstrap", check=0)
    assert "already done" in again.stdout
