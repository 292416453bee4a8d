"""Helpers for the sweep tests and bench: a project on the ``local`` provider with a
checkout made by hand (examples/ + a tiny job script, ``.venv`` -> ``.venv-torch``) and
the state set with ``fsm-reset``, as if pod-up/bootstrap/checkout had run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
WF = str(Path(sys.executable).with_name("wf"))
TORCH_VENV = REPO / ".venv-torch"

JOB = textwrap.dedent('''\
    """Test job: key=value args; writes args.json, prints JSON metric lines."""
    import json, os, sys, time
    out = os.environ["WF_OUT_DIR"]
    os.makedirs(out, exist_ok=True)
    args = sys.argv[1:]
    kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("--"))
    with open(os.path.join(out, "args.json"), "w") as fh:
        json.dump({"argv": args, "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "t0": time.time(),
                   "env": {k: v for k, v in os.environ.items() if k.startswith("WF_") or k == "PATH"},
                   "cwd": os.getcwd()}, fh)
    marker = os.path.join(out, "slept-once")
    if kv.get("sleep_once") and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(float(kv["sleep_once"]))
    for _ in range(2400 if kv.get("gate") else 0):  # runs on once the test made this file (120 s at most)
        if os.path.exists(kv["gate"]):
            break
        time.sleep(0.05)
    for i in range(int(kv.get("steps", 2))):
        print(json.dumps({"step": i, "loss": 1.0 / (i + 1)}), flush=True)
        with open(os.path.join(out, "file%d.txt" % i), "w") as fh:
            fh.write("x" * 10)
        time.sleep(float(kv.get("sleep", 0.05)))
    if kv.get("fail"):
        print("boom: failing on purpose", flush=True)
        sys.exit(int(kv["fail"]))
    if kv.get("abort_rank") == os.environ.get("RANK", "0"):
        print("rank %s aborting on purpose" % kv["abort_rank"], flush=True)
        os.abort()
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({"script_key": 1, "duration_secs": "the script's own"}, fh)
    ''')


class SweepProject:
    def __init__(self, root: Path, config: Dict[str, Any], csv: str):
        self.root = root
        self.pod = root / ".podflow" / "local-pod"
        self.repo = self.pod / "repo"
        self.outputs = self.pod / "outputs"
        (root / "configs").mkdir(parents=True, exist_ok=True)
        (root / "sweeps").mkdir(exist_ok=True)
        ex = self.repo / "examples"
        shutil.copytree(REPO / "examples", ex, ignore=shutil.ignore_patterns("out", "__pycache__"))
        (ex / "job.py").write_text(JOB)
        (self.repo / ".venv").symlink_to(TORCH_VENV)
        self.write_config(config)
        self.write_csv(csv)
        self.wf("fsm-reset", "CHECKED_OUT", "--reason", "checkout made by hand (test)", check=0)

    def write_config(self, config: Dict[str, Any]) -> None:
        base: Dict[str, Any] = {
            "project": "t",
            "pod": {"provider": "local"},
            "checkout": {"require_cuda": False},
            "sweep": {"csv": "sweeps/sweep.csv", "workdir": "examples", "launcher": "python",
                      "entrypoint": "job.py", "args": ["{config}", "--seed={seed}"]},
        }
        for key, value in config.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key].update(value)
            else:
                base[key] = value
        (self.root / "configs" / "workflow.yaml").write_text(yaml.safe_dump(base))

    def write_csv(self, text: str) -> None:
        (self.root / "sweeps" / "sweep.csv").write_text(textwrap.dedent(text).lstrip())

    def wf(self, *args: str, check: Optional[int] = None, timeout: float = 180) -> subprocess.CompletedProcess:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run([WF, *args], cwd=self.root, capture_output=True, text=True, timeout=timeout, env=env)
        if check is not None:
            assert proc.returncode == check, f"wf {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def status(self) -> Dict[str, Any]:
        return json.loads(self.wf("sweep-status", "--json", check=0).stdout)

    def agent(self):
        from workflow.agent_client import AgentClient
        from workflow.transport.local import LocalTransport

        return AgentClient(LocalTransport(), str(self.outputs))

    def raw_status(self) -> Dict[str, Any]:
        return self.agent().call("sweep.status")

    def wait_for(self, pred, timeout: float = 60.0, what: str = "condition") -> Dict[str, Any]:
        agent = self.agent()
        end = time.monotonic() + timeout
        while True:
            doc = agent.call("sweep.status")
            if pred(doc):
                return doc
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}: {json.dumps(doc, indent=1)[:3000]}")
            time.sleep(0.1)

    def run_status(self, run_id: str) -> Dict[str, Any]:
        return json.loads((self.outputs / run_id / "status.json").read_text())

    def fsm_state(self) -> str:
        return json.loads((self.outputs / "_control" / "workflow_state.json").read_text())["state"]


def runs_by_id(doc: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {r["id"]: r for r in doc["runs"]}


def marked_pids(nonces) -> list:
    """Live processes carrying any of these job nonces in their environment."""
    marks = [f"PODFLOW_TASK_MARK={n}".encode() for n in nonces if n]
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as fh:
                st = fh.read().decode(errors="replace")
        except OSError:
            continue
        if st[st.rfind(")") + 2:].startswith("Z"):
            continue
        if any(m in env for m in marks):
            found.append(int(name))
    return found


def checkout_on_ssh_pod(pod) -> Path:
    """What bootstrap + checkout would leave on an ``sshd.SshPod``: examples/ and the test
    job in ``remote.workdir``, and a ``.venv`` whose python is the system one (the pod
    user cannot use this machine's torch venv). Returns the checkout."""
    repo = pod.remote_dir / "repo"
    shutil.copytree(REPO / "examples", repo / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
    (repo / "examples" / "job.py").write_text(JOB)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    subprocess.run(["chown", "-R", f"{pod.uid}:{pod.gid}", str(repo)], check=True)
    return repo
