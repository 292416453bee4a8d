"""A project wired to one fake provider API, driven through the real ``wf`` CLI.

    with CloudProject(kind, tmp, keys, sshd_dir, offers=[...]) as cp:
        r = cp.wf("pod-up")

The config points at the fake (``VAST_URL`` / ``RUNPOD_API_BASE_URL`` / ``LIUM_BASE_URL``),
logs in as the sshd fixture's test user with its key, and keeps ``remote.*`` under a
directory unique to the project (removed at close). ``HOME`` is the test's own and
``NO_PROXY`` covers loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
WF = str(Path(sys.executable).with_name("wf"))
KEYS = {"vastai": "VAST_API_KEY", "runpod": "RUNPOD_API_KEY", "lium": "LIUM_API_KEY"}
SECRET = {"vastai": "vast-key-7Hq2-secret", "runpod": "rp-key-91Xz-secret", "lium": "lium-key-4Kd8-secret"}


def make_api(kind: str, make_sshd, items: List[Any]):
    if kind == "vastai":
        from fakes.vast import FakeVast

        return FakeVast(SECRET[kind], make_sshd, items)
    if kind == "runpod":
        from fakes.runpod import FakeRunpod

        return FakeRunpod(SECRET[kind], make_sshd, items)
    from fakes.lium import FakeLium

    return FakeLium(SECRET[kind], make_sshd, items)


def api_env(kind: str, api) -> Dict[str, str]:
    env = {KEYS[kind]: SECRET[kind], "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    if kind == "vastai":
        env["VAST_URL"] = api.url
    elif kind == "runpod":
        env["RUNPOD_API_BASE_URL"] = api.url
    else:
        env["LIUM_BASE_URL"] = api.url + "/api"
    return env


class CloudProject:
    def __init__(self, kind: str, root: Path, keys, sshd_dir: Path, items: List[Any], **pod: Any):
        from sshd import SshPod, ensure_user

        self.kind = kind
        self.root = Path(root)
        (self.root / "configs").mkdir(parents=True, exist_ok=True)
        self.home = self.root / "home"
        self.home.mkdir(exist_ok=True)
        self.keys = keys
        self.made: List[Any] = []

        def make_sshd():
            p = SshPod(keys, sshd_dir)
            self.made.append(p)
            return p

        self.api = make_api(kind, make_sshd, items).start()
        pw = ensure_user()
        self.remote = Path(pw.pw_dir) / "wft" / f"proj-{uuid.uuid4().hex[:10]}"
        self.project = f"pft-{uuid.uuid4().hex[:6]}"
        self.config: Dict[str, Any] = {
            "project": self.project,
            "progress": "milestones",
            "pod": {"provider": kind, "user": "wftest", "identity_file": str(keys.key_path),
                    "known_hosts": ".podflow/known_hosts", "ready_timeout_secs": 20, "connect_timeout_secs": 5,
                    **pod},
            "remote": {"workdir": str(self.remote / "repo"), "outputs_dir": str(self.remote / "outputs"),
                       "data_dir": str(self.remote / "data")},
            "checkout": {"require_cuda": False},
        }
        self.write_config()
        self.env = dict(os.environ, HOME=str(self.home), **api_env(kind, self.api))
        for var in list(self.env):
            if var.startswith("WF__") or var in ("WF_CONFIG", "WF_ENV_FILE", "REMOTE_SSH_PASSWORD"):
                self.env.pop(var)

    def write_config(self, **pod: Any) -> None:
        self.config["pod"].update(pod)
        (self.root / "configs" / "workflow.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))

    def wf(self, *args: str, timeout: float = 120, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run([WF, *args], cwd=self.root, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)

    def job_sweep(self, git_repo, git_daemon, rows: str, **config: Any) -> str:
        """A sweep of the test job (``test_sweep_run_helpers.JOB``, python launcher) from a real
        checkout of ``git_repo`` served by ``git_daemon``; ``rows``: ``run_id,overrides`` lines
        (config ``configs/tiny.json``, seed 0); ``config``: more sections (``pool``, ``remote``).
        Returns the commit the pods will check out."""
        from test_sweep_run_helpers import JOB

        for path, text in (("examples/job.py", JOB), ("examples/configs/tiny.json", "{}\n")):
            (git_repo.work / path).parent.mkdir(parents=True, exist_ok=True)
            sha = git_repo.commit("main", path, text)
        self.config.update(
            checkout={"repo_url": git_daemon.url(git_repo), "require_cuda": False, "require_torch": False},
            sweep={"csv": "sweeps/sweep.csv", "workdir": "examples", "launcher": "python", "entrypoint": "job.py",
                   "args": ["{config}", "--seed={seed}"]}, **config)
        self.write_config()
        (self.root / "sweeps").mkdir(exist_ok=True)
        (self.root / "sweeps" / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n" + "".join(
            f"{run_id},configs/tiny.json,0,{overrides},\n" for run_id, overrides in
            (line.split(",", 1) for line in rows.strip().splitlines())))
        return sha

    def live_pods(self) -> list:
        return [p for p in self.api.pods.values() if not getattr(p, "fake", p).destroyed]

    def close(self) -> None:
        self.api.close()
        for p in self.made:
            p.cleanup()
        if self.remote.exists():
            subprocess.run(["runuser", "-u", "wftest", "--", "rm", "-rf", str(self.remote)], capture_output=True)
            shutil.rmtree(self.remote, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
