"""Shared fixtures. Each test gets a fresh project dir and HOME; nothing of the user's
(``~/.ssh/config``, tmux server, known_hosts) is read or touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
