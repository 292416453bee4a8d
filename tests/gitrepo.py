"""A real git repository for checkout tests: two branches, a PR ref, known SHAs.

``make_repo(base)`` builds ``<base>/repo.git`` (bare), readable by everyone::

    main     README.md, train.py                      (sha: repo.main_sha)
    feature  main + feature.txt                       (repo.feature_sha)
    refs/pull/7/head   main + pr.txt, on no branch    (repo.pr_sha)

``repo.url`` is its path (what the ``local`` provider, running as this user, clones).
The loopback pod logs in as another user, for whom git refuses a repository it does
not own ("dubious ownership"); ``GitDaemon`` serves the same repo on 127.0.0.1 and
``daemon.url(repo)`` gives its ``git://`` URL (``git_daemon`` is the pytest fixture).
``repo.commit(branch, path, text)`` pushes one more commit (to test fetching).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

_ENV = {"GIT_AUTHOR_NAME": "podflow tests", "GIT_AUTHOR_EMAIL": "tests@podflow.invalid",
        "GIT_COMMITTER_NAME": "podflow tests", "GIT_COMMITTER_EMAIL": "tests@podflow.invalid",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def git(*args: str, cwd: os.PathLike = None) -> str:
    env = dict(os.environ, **_ENV)
    env["HOME"] = env.get("HOME", "/nonexistent")
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class Repo:
    bare: Path
    work: Path
    main_sha: str
    feature_sha: str
    pr_sha: str

    @property
    def url(self) -> str:
        return str(self.bare)

    def commit(self, branch: str, path: str, text: str) -> str:
        """One more commit on ``branch`` of the served repo; returns its SHA."""
        git("checkout", "-q", branch, cwd=self.work)
        (self.work / path).write_text(text)
        git("add", path, cwd=self.work)
        git("commit", "-q", "-m", f"update {path}", cwd=self.work)
        git("push", "-q", "origin", branch, cwd=self.work)
        _readable(self.bare)
        return git("rev-parse", "HEAD", cwd=self.work)


def _readable(path: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)


def make_repo(base: os.PathLike) -> Repo:
    base = Path(base)
    work = base / "work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("# toy project\n")
    (work / "train.py").write_text("print('training')\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "initial", cwd=work)
    main_sha = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "feature.txt").write_text("a feature\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "feature", cwd=work)
    feature_sha = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "--detach", main_sha, cwd=work)
    (work / "pr.txt").write_text("a pull request\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "pull request 7", cwd=work)
    pr_sha = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    bare = base / "repo.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    git("update-ref", "refs/pull/7/head", pr_sha, cwd=bare)
    git("remote", "add", "origin", str(bare), cwd=work)
    _readable(base)
    return Repo(bare, work, main_sha, feature_sha, pr_sha)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GitDaemon:
    """``git daemon`` on 127.0.0.1 exporting every repository under ``base``."""

    def __init__(self, base: os.PathLike):
        self.base = Path(base)
        self.port = _free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={self.base}", str(self.base)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("git daemon did not start")
            time.sleep(0.02)

    def url(self, repo: Repo) -> str:
        return f"git://127.0.0.1:{self.port}/{repo.bare.relative_to(self.base)}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def git_repo() -> Iterator[Repo]:
    """A fresh repo (see the module docstring) in a directory every user can read."""
    base = Path(tempfile.mkdtemp(prefix="podflow-git-"))
    os.chmod(base, 0o755)
    try:
        yield make_repo(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def git_daemon(git_repo) -> Iterator[GitDaemon]:
    """``git daemon`` serving ``git_repo``'s directory on loopback."""
    daemon = GitDaemon(git_repo.bare.parent)
    try:
        yield daemon
    finally:
        daemon.stop()
