"""Shared fixtures. Each test gets a fresh project dir and HOME; nothing of the user's
(``~/.ssh/config``, tmux server, known_hosts, GPU leases) is read or touched.

``scripts/test`` runs the suite on several pytest-xdist workers; a session fixture runs
once per worker. Tests sharing something machine-wide that another test would disturb
(a fixed unix user's home, the browser) carry ``@pytest.mark.xdist_group("<what>")``:
``--dist loadgroup`` runs a group's tests on one worker, one after another."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


#: The reliability figures (``tests/reliability/figures.py``) pytest-xdist workers handed back.
_WORKER_FIGURES: list = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _WORKER_FIGURES.extend(getattr(node, "workeroutput", {}).get("reliability_figures", ()))


def pytest_sessionfinish(session, exitstatus):
    if _WORKER_FIGURES:
        from reliability import figures

        figures.write(_WORKER_FIGURES)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WF_CONFIG", "WF_ENV_FILE", "REMOTE_SSH_PASSWORD", "TMUX", "TMUX_TMPDIR"):
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith("WF__"):
            monkeypatch.delenv(var, raising=False)
    # The local "pod" of this test has GPUs of its own: fake GPU ids of tests running at
    # the same time (pytest-xdist workers) never wait on each other's pod-wide leases.
    monkeypatch.setenv("PODFLOW_GPU_LEASE_DIR", str(tmp_path / "gpu-leases"))
    from workflow import runtime

    runtime.keep_connections(False)
    runtime.reset()
    yield home
    runtime.reset()
    runtime.keep_connections(False)
    end_kept_connections(tmp_path)


def end_kept_connections(base: Path) -> None:
    """Kill the kept-connection servers and warm CLI servers that ``wf`` commands of a test
    left under ``base`` (by the PID in their lock files, checked to be one), so none
    outlives its test."""
    from workflow.cli import zygote
    from workflow.transport.kept import client as kept

    for pattern in ("*/.podflow/kept", "*/*/.podflow/kept"):
        for directory in base.glob(pattern):
            kept.kill_all(directory.parent.parent)
    for pattern in ("*/.podflow/cli", "*/*/.podflow/cli"):
        for directory in base.glob(pattern):
            zygote.kill(directory.parent.parent)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory, made the cwd."""
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root
from sshd import SshPod, ssh_client_keys, ssh_pod, ssh_session_dir  # noqa: F401,E402
