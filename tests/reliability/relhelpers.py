"""Helpers of the reliability suite: the ``wf`` CLI in-process and as a subprocess,
bounded timing, traceback detection, file snapshots."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

WF = str(Path(sys.executable).with_name("wf"))
#: SPEC §3 exit codes.
SPEC_CODES = {0, 1, 2, 3, 4, 5, 130}


@dataclass
class Result:
    code: int
    out: str
    err: str
    secs: float

    @property
    def text(self) -> str:
        return self.out + self.err


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1  # sys.exit("message")


def wf_inproc(*argv: str) -> Result:
    """``wf ARGV`` in this process (the Invoke Program with workflow.cli's collection),
    with fresh per-invocation state as a new process would have."""
    from invoke import Program

    from workflow import __version__, runtime
    from workflow.cli import ns

    runtime.reset()
    out, err = io.StringIO(), io.StringIO()
    program = Program(namespace=ns, version=__version__, name="podflow", binary="wf")
    started = time.monotonic()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["wf", *argv], exit=True)
        except SystemExit as exc:
            code = _exit_code(exc)
    runtime.reset()
    return Result(code, out.getvalue(), err.getvalue(), time.monotonic() - started)


def wf_proc(*argv: str, cwd: Optional[os.PathLike] = None, env: Optional[Dict[str, str]] = None,
            timeout: float = 120, input: Optional[str] = None) -> Result:
    """``wf ARGV`` as a real subprocess."""
    started = time.monotonic()
    p = subprocess.run([WF, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       input=input)
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - started)


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text


def snapshot(root: Path) -> Dict[str, bytes]:
    """Every regular file under ``root`` -> its bytes (state comparison)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def wait_until(pred, timeout: float = 15.0, step: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---------------------------------------------------------------- a sweep on an ssh pod

JOB = '''\
import json, os, sys, time
out = os.environ["WF_OUT_DIR"]
os.makedirs(out, exist_ok=True)
kv = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("--"))
t0 = time.time()
marker = os.path.join(out, "slept-once")
if kv.get("sleep_once") and not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(float(kv["sleep_once"]))
time.sleep(float(kv.get("sleep", 0)))
with open(os.path.join(out, "launches.txt"), "a") as fh:
    fh.write("%s %s %s\\n" % (t0, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")))
with open(os.path.join(out, "argv.json"), "w") as fh:
    json.dump(sys.argv[1:], fh)
print(json.dumps({"loss": 0.5}), flush=True)
sys.exit(int(kv.get("fail", 0)))
'''


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for p in Path(path).rglob("*"):
        os.lchown(p, uid, gid)


def sweep_project(pod, project: Path, rows, *, remote=None, **overrides):
    """A checkout made by hand on ``pod`` (job.py, configs/a.yaml, .venv/bin/python ->
    python3) and ``sweeps/s.csv`` in ``project`` holding ``rows`` (run_id, overrides[,
    gpus]); the config written for ``pod`` with ``launcher: python``. The state is set
    to CHECKED_OUT with fsm-reset, as if bootstrap and checkout had run."""
    repo = Path((remote or {}).get("workdir") or pod.remote_dir / "repo")
    (repo / "configs").mkdir(parents=True, exist_ok=True)
    (repo / "job.py").write_text(JOB)
    (repo / "configs" / "a.yaml").write_text("lr: 0.1\n")
    (repo / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    py = repo / ".venv" / "bin" / "python"
    if not py.exists():
        py.symlink_to("/usr/bin/python3")
    chown_tree(repo, pod.uid, pod.gid)
    with_gpus = any(len(r) > 2 for r in rows)
    lines = ["run_id,config,seed,overrides,notes" + (",gpus" if with_gpus else "")]
    for r in rows:
        line = f'{r[0]},configs/a.yaml,1,"{r[1]}",'
        if with_gpus:
            line += f",{r[2] if len(r) > 2 else ''}"
        lines.append(line)
    (project / "sweeps").mkdir(exist_ok=True)
    (project / "sweeps" / "s.csv").write_text("\n".join(lines) + "\n")
    sweep = {"csv": "sweeps/s.csv", "workdir": ".", "entrypoint": "job.py", "launcher": "python",
             "args": ["{config}", "--seed={seed}"]}
    sweep.update(overrides.pop("sweep", {}))
    kw = {"sweep": sweep}
    if remote:
        kw["remote"] = remote
    pod.write_config(project, **kw, **overrides)
    r = wf_inproc("fsm-reset", "CHECKED_OUT", "--reason", "checkout made by the test")
    assert r.code == 0, r.text
    return repo
