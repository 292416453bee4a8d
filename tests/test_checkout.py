"""checkout: a real git repo (branches, a PR ref, known SHAs) cloned and fetched on the
pod, local changes guarded, a venv over another venv's torch, the torch/CUDA preflight,
data checks and the download fix, the state machine — on the local provider and over a
loopback sshd with ``git daemon``. Mirrors ``workflow/prepare.py`` and
``workflow/agent/checkout.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gitrepo import git, git_daemon, git_repo  # noqa: F401 - fixtures

WF = str(Path(sys.executable).with_name("wf"))
SYSTEM_PY = "/usr/bin/python3"
TORCH_PY = str(Path(__file__).resolve().parents[1] / ".venv-torch" / "bin" / "python")
needs_torch = pytest.mark.skipif(not os.path.exists(TORCH_PY), reason="needs .venv-torch (bash scripts/setup)")


def wf(project, *args, check=None, timeout=240):
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def local_config(project: Path, repo, **checkout) -> None:
    doc = {
        "project": "co",
        "pod": {"provider": "local"},
        "remote": {"python": SYSTEM_PY},
        "checkout": {"repo_url": repo.url, "require_torch": False, "require_cuda": False, **checkout},
    }
    data = checkout.pop("data", None)
    doc["checkout"].pop("data", None)
    if data:
        doc["data"] = data
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump(doc))


def pod_dir(project: Path) -> Path:
    return project / ".podflow" / "local-pod"


def fsm_state(project) -> dict:
    return json.loads(wf(project, "fsm-status", "--json", check=0).stdout)


def head(workdir: Path) -> str:
    return git("rev-parse", "HEAD", cwd=workdir)


@pytest.fixture
def pod(project, git_repo):
    """A local pod in BOOTSTRAPPED, configured for ``git_repo`` (no torch needed)."""
    local_config(project, git_repo)
    wf(project, "fsm-reset", "BOOTSTRAPPED", "--reason", "test", check=0)
    return project


def test_branch_pr_default_with_expected_sha_and_a_fetch(pod, git_repo):
    repo, workdir = git_repo, pod_dir(pod) / "repo"
    local_config(pod, repo, branch="feature")
    res = wf(pod, "checkout", check=0)
    assert res.stdout.splitlines()[-1].startswith(f"checkout: CHECKED_OUT at {repo.feature_sha[:12]} (branch feature)")
    doc = fsm_state(pod)
    assert doc["state"] == "CHECKED_OUT" and doc["checkout_sha"] == repo.feature_sha
    assert doc["checkout_branch"] == "feature" and doc["checkout_pr"] is None
    assert head(workdir) == repo.feature_sha and (workdir / "feature.txt").exists()
    assert "include-system-site-packages = true" in (workdir / ".venv" / "pyvenv.cfg").read_text()
    assert git("status", "--porcelain", cwd=workdir) == ""  # the venv is not an untracked change

    local_config(pod, repo, pr=7)
    res = wf(pod, "checkout", "--progress", "realtime", check=0)
    assert "pull/7/head" in res.stdout and "reusing" in res.stdout  # realtime: git's commands, the venv kept
    doc = fsm_state(pod)
    assert doc["checkout_sha"] == repo.pr_sha and doc["checkout_pr"] == 7 and doc["checkout_branch"] is None
    assert (workdir / "pr.txt").exists() and not (workdir / "feature.txt").exists()

    local_config(pod, repo, expect_sha=repo.main_sha[:10])  # default branch, SHA prefix verified
    wf(pod, "checkout", "--progress", "quiet", check=0)
    assert fsm_state(pod)["checkout_sha"] == repo.main_sha == head(workdir)

    before = fsm_state(pod)
    local_config(pod, repo, branch="feature", expect_sha="deadbeef")
    res = wf(pod, "checkout", check=1)
    assert "step 'resolve'" in res.stderr and "expect_sha deadbeef" in res.stderr
    assert repo.feature_sha in res.stderr
    after = fsm_state(pod)
    assert after["history"] == before["history"] and after["checkout_sha"] == repo.main_sha
    assert head(workdir) == repo.main_sha  # refused before touching the tree

    new_sha = repo.commit("main", "README.md", "# toy project, v2\n")
    local_config(pod, repo)
    wf(pod, "checkout", check=0)
    assert fsm_state(pod)["checkout_sha"] == new_sha == head(workdir)


def test_local_changes_are_refused_then_discarded_with_force_clean(pod, git_repo):
    repo, workdir = git_repo, pod_dir(pod) / "repo"
    wf(pod, "checkout", check=0)
    (workdir / "README.md").write_text("edited on the pod\n")
    (workdir / "feature.txt").write_text("untracked here, tracked on feature\n")  # would be clobbered
    (workdir / "notes.txt").write_text("scratch\n")
    before = fsm_state(pod)

    local_config(pod, repo, branch="feature")
    res = wf(pod, "checkout", check=1)
    assert "step 'checkout'" in res.stderr and "local changes" in res.stderr
    assert "M README.md" in res.stderr and "feature.txt (would be overwritten)" in res.stderr
    assert "notes.txt" not in res.stderr.split("hint")[0]  # not in the way: not a reason to refuse
    assert "checkout.force_clean: true" in res.stderr
    assert (workdir / "README.md").read_text() == "edited on the pod\n"
    assert fsm_state(pod)["history"] == before["history"] and head(workdir) == repo.main_sha

    local_config(pod, repo, branch="feature", force_clean=True)
    res = wf(pod, "checkout", check=0)
    assert "force_clean: discarding 3 local change(s)" in res.stdout
    assert (workdir / "README.md").read_text() == "# toy project\n"
    assert (workdir / "feature.txt").read_text() == "a feature\n" and not (workdir / "notes.txt").exists()
    assert (workdir / ".venv" / "bin" / "python").exists()  # clean -x spares the venv
    doc = fsm_state(pod)
    assert doc["checkout_sha"] == repo.feature_sha
    assert doc["checkout_force_cleaned"]["count"] == 3
    assert "M README.md" in doc["checkout_force_cleaned"]["discarded"]

    git("-c", "user.name=p", "-c", "user.email=p@x", "commit", "-q", "--allow-empty", "-m", "pod only",
        cwd=workdir)  # a commit on 'feature' that the remote lacks
    wf(pod, "checkout", "--progress", "quiet", check=0)  # force_clean still on: discarded, recorded
    assert head(workdir) == repo.feature_sha
    assert "commits not on the remote" in fsm_state(pod)["checkout_force_cleaned"]["discarded"][0]
    local_config(pod, repo, branch="feature")
    git("-c", "user.name=p", "-c", "user.email=p@x", "commit", "-q", "--allow-empty", "-m", "pod only",
        cwd=workdir)
    res = wf(pod, "checkout", check=1)
    assert "branch feature at" in res.stderr and "commits not on the remote" in res.stderr


def test_a_checkout_of_another_repository_is_refused(pod, git_repo, tmp_path):
    workdir = pod_dir(pod) / "repo"
    wf(pod, "checkout", check=0)
    git("remote", "set-url", "origin", str(tmp_path / "elsewhere.git"), cwd=workdir)
    res = wf(pod, "checkout", check=1)
    assert "is a clone of" in res.stderr and "elsewhere.git" in res.stderr


def test_data_checks_fixed_by_the_download_command(pod, git_repo, tmp_path):
    tok = tmp_path / "tokenizer.bin"
    checks = [{"path": "shards", "min_files": 2}, {"path": str(tok)}]
    local_config(pod, git_repo, data={"checks": checks})
    res = wf(pod, "checkout", check=1)
    assert "step 'data'" in res.stderr and "shards: missing" in res.stderr and "tokenizer.bin: missing" in res.stderr
    assert "wf push-data" in res.stderr and fsm_state(pod)["state"] == "BOOTSTRAPPED"

    local_config(pod, git_repo, data={"checks": checks, "download": "mkdir -p shards && touch shards/a"})
    res = wf(pod, "checkout", check=1)
    assert "still fail after data.download" in res.stderr and "1 file(s), needs at least 2" in res.stderr

    download = f'mkdir -p shards && touch shards/a shards/b && test "$DATA_DIR" = "$PWD" && touch {tok}'
    local_config(pod, git_repo, data={"checks": checks, "download": download})
    res = wf(pod, "checkout", check=0)
    assert "running data.download" in res.stdout
    assert sorted(p.name for p in (pod_dir(pod) / "data" / "shards").iterdir()) == ["a", "b"]
    assert fsm_state(pod)["state"] == "CHECKED_OUT"
    res = wf(pod, "checkout", "--progress", "realtime", check=0)  # checks pass now: no download
    assert "running data.download" not in res.stdout and ">= 2 file(s): ok" in res.stdout


def test_install_command_runs_in_the_checkout_with_the_venv_first(pod, git_repo):
    local_config(pod, git_repo, install="command -v python > installed-by.txt; exit 0")
    wf(pod, "checkout", check=0)
    workdir = pod_dir(pod) / "repo"
    assert (workdir / "installed-by.txt").read_text().strip() == str(workdir / ".venv" / "bin" / "python")
    local_config(pod, git_repo, install="echo 'pip: resolution failed'; exit 4")
    res = wf(pod, "checkout", check=1)
    assert "step 'install'" in res.stderr and "pip: resolution failed" in res.stderr


def test_detach_then_task_wait_moves_the_state(pod, git_repo):
    res = wf(pod, "checkout", "--detach", check=0)
    task_id = res.stdout.splitlines()[0]
    assert task_id.startswith("checkout-") and f"wf task-wait --id {task_id}" in res.stdout
    busy = wf(pod, "checkout", check=2)  # one at a time (the first is still making the venv)
    assert f"task '{task_id}' is still running" in busy.stderr
    wf(pod, "task-wait", "--id", task_id, check=0)
    doc = fsm_state(pod)
    assert doc["state"] == "CHECKED_OUT" and doc["checkout_sha"] == git_repo.main_sha
    assert doc["history"][-1]["trigger"] == "checkout"


def test_state_machine_refusal_and_bad_config_run_nothing(project, git_repo):
    local_config(project, git_repo)
    wf(project, "fsm-reset", "POD_READY", check=0)
    res = wf(project, "checkout", check=3)
    assert "POD_READY" in res.stderr and "BOOTSTRAPPED" in res.stderr
    wf(project, "fsm-reset", "BOOTSTRAPPED", check=0)
    local_config(project, git_repo, branch="feature", pr=7)
    res = wf(project, "checkout", check=2)
    assert "checkout.branch" in res.stderr and "checkout.pr" in res.stderr
    (project / "configs" / "workflow.yaml").write_text("project: co\npod:\n  provider: local\n")
    res = wf(project, "checkout", check=2)
    assert "checkout.repo_url is not set" in res.stderr
    assert not (pod_dir(project) / "outputs" / "_tasks").exists()
    assert fsm_state(project)["state"] == "BOOTSTRAPPED"


@pytest.mark.ssh
@needs_torch
def test_torch_preflight_over_ssh_with_a_venv_python(ssh_pod, project, git_repo, git_daemon):  # noqa: F811
    url = git_daemon.url(git_repo)
    ssh_pod.write_config(project, remote__python=TORCH_PY,
                         checkout={"repo_url": url, "branch": "feature", "require_cuda": True})
    wf(project, "fsm-reset", "BOOTSTRAPPED", check=0)
    res = wf(project, "checkout", check=1)
    assert "step 'preflight'" in res.stderr and "torch.cuda.is_available() is False" in res.stderr
    assert "checkout.require_cuda: false" in res.stderr
    assert fsm_state(project)["state"] == "BOOTSTRAPPED"

    # the default, require_cuda: auto, wants CUDA on an ssh host only when it has nvidia-smi
    ssh_pod.write_config(project, remote__python=TORCH_PY, checkout={"repo_url": url, "branch": "feature"})
    res = wf(project, "checkout", "--progress", "realtime", check=0)
    assert "import torch and CUDA" not in res.stdout
    assert "torch 2." in res.stdout and "its site-packages are visible" in res.stdout
    doc = fsm_state(project)
    assert doc["state"] == "CHECKED_OUT" and doc["checkout_sha"] == git_repo.feature_sha
    venv_py = ssh_pod.remote_dir / "repo" / ".venv" / "bin" / "python"
    out = ssh_pod.run_as_user([str(venv_py), "-c", "import sys, torch; print(sys.prefix, torch.__version__)"])
    assert out.returncode == 0 and out.stdout.split()[0] == str(venv_py.parent.parent), out.stderr

    # A python without torch: the venv rebuilt from it fails the preflight, clearly.
    ssh_pod.write_config(project, remote__python=SYSTEM_PY,
                         checkout={"repo_url": url, "branch": "feature", "require_cuda": False,
                                   "venv_recreate": True})
    res = wf(project, "checkout", check=1)
    assert "import torch fails in the venv" in res.stderr and f"remote.python {SYSTEM_PY}" in res.stderr
    assert "ModuleNotFoundError" in res.stderr
    assert fsm_state(project)["history"] == doc["history"]


@pytest.mark.parametrize("progress", ["milestones", "realtime", "quiet"])
def test_a_failed_checkout_says_its_hint_once(pod, git_repo, progress):
    local_config(pod, git_repo, branch="no-such-branch")
    res = wf(pod, "checkout", "--progress", progress, check=1)
    out = res.stdout + res.stderr
    assert out.count("branches there: feature, main") == 1, out
    assert "  hint: branches there: feature, main" in res.stderr  # said by the error itself
    assert out.count("is not on the remote") == (1 if progress == "quiet" else 2), out  # the error + the live FAILED line
    task_id = res.stderr.split("wf task-logs --id ")[1].split()[0]
    log = wf(pod, "task-logs", "--id", task_id, check=0).stdout
    assert "hint: branches there: feature, main" in log  # the log keeps it for a detached checkout
