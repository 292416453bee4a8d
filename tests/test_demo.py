"""`wf demo` end to end: pod-up -> bootstrap -> checkout (of the packaged examples/, a git repo
under the demo dir) ->
sweep-start -> sweep-wait -> fetch-all on the local provider, real torchrun DDP on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from leakcheck import ProcWatch, leaks_in_cmdlines, leaks_in_files

REPO = Path(__file__).resolve().parents[1]
WF = str(Path(sys.executable).with_name("wf"))
TORCH_PY = str(REPO / ".venv-torch" / "bin" / "python")


@pytest.mark.skipif(not (REPO / ".venv-torch" / "bin" / "torchrun").exists(), reason="needs .venv-torch")
def test_demo_on_two_pods_one_killed_halfway_then_again_on_one(tmp_path, isolated_home):
    """``wf demo --pods 2``: the last pod (p1) is killed for real halfway through its run
    (every process of it ended); its run finishes on p0 as attempt 2, resumed from its
    checkpoint, and the demo says so. Then the plain demo starts over on one pod, with a
    password and fake API keys in the environment (SPEC §2 over the whole workflow): no
    output, file (HOME, the demo's dir) or command line seen during it holds any."""
    demo_dir = tmp_path / "demo"
    env = dict(os.environ, PODFLOW_DEMO_DIR=str(demo_dir))
    user_cfg = tmp_path / "elsewhere"
    user_cfg.mkdir()
    proc = subprocess.run([WF, "demo", "--pods", "2", "--python", TORCH_PY], cwd=user_cfg, env=env,
                          capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("pod-up", "bootstrap", "checkout", "sweep-start", "sweep-wait", "fetch-all"):
        assert f"] {step}" in out, step
    assert "] killing p1 halfway: demo-tiny-s1-lr05 runs there" in out, out
    assert "] p1 is down: the provider says it is terminated" in out, out
    assert "] p0 took demo-tiny-s1-lr05 from p1 (down) (attempt 2)" in out, out
    assert "p1 was killed halfway; demo-tiny-s1-lr05 finished on p0 as attempt 2, resumed from its checkpoint " \
           "at step 10" in out, out
    table = out[out.index("RUN "):]
    for run, where in (("demo-tiny-s0", "p0   1        -"), ("demo-tiny-s1-lr05", "p0   2        step 10"),
                       ("demo-small-s0", "p0   1        -")):
        line = next(x for x in table.splitlines() if x.startswith(run + " "))
        assert f" success  {where} " in line and str(demo_dir / "artifacts" / run) in line, line
        assert (demo_dir / "artifacts" / run / "metrics.jsonl").is_file()
    summary = json.loads((demo_dir / "artifacts" / "demo-tiny-s1-lr05" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 10 and summary["steps"] == 20
    # p1 died as a machine dies: its copy of the run still says running, its processes are gone
    assert json.loads((demo_dir / "pod" / "outputs-p1.down.json").read_text())["state"] == "terminated"
    stale = json.loads((demo_dir / "pod" / "outputs-p1" / "demo-tiny-s1-lr05" / "status.json").read_text())
    assert (stale["state"], stale["attempt"]) == ("running", 1)
    with pytest.raises(ProcessLookupError):
        os.kill(stale["wrapper_pid"], 0)
    state = json.loads((demo_dir / "pod" / "outputs" / "_control" / "workflow_state.json").read_text())
    assert state["state"] == "SWEEP_COMPLETED"
    assert not list(user_cfg.iterdir())  # nothing written where it was started

    secrets = {name: f"{name.lower()}-leak-{uuid.uuid4().hex}" for name in
               ("REMOTE_SSH_PASSWORD", "VAST_API_KEY", "RUNPOD_API_KEY", "LIUM_API_KEY", "WANDB_API_KEY")}
    with ProcWatch(os.getuid()) as watch:
        again = subprocess.run([WF, "demo", "--json", "--python", TORCH_PY], cwd=user_cfg, env=dict(env, **secrets),
                               capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    leaks = [f"output: {n}" for n, v in secrets.items() if v in again.stdout + again.stderr]
    files, found = leaks_in_files(secrets, ((isolated_home, ()), (demo_dir, ())))
    leaks += found + leaks_in_cmdlines(secrets, watch)
    assert files > 50 and watch.samples > 20 and not leaks, leaks
    doc = json.loads(again.stdout)
    assert doc["ok"] and [r["state"] for r in doc["runs"]] == ["success"] * 3
    assert all(isinstance(r["final_loss"], float) for r in doc["runs"])
    for run in ("demo-tiny-s0", "demo-tiny-s1-lr05"):  # started over: the runs ran again from scratch
        status = json.loads((demo_dir / "pod" / "outputs" / run / "status.json").read_text())
        assert status["attempt"] == 1, run
    # torch's GPU count was kept by the checkout's preflight, and sweep-start's probe used it
    # (a probe that imported torch again would have written it after the checkout ended)
    from datetime import datetime

    kept = demo_dir / "pod" / "outputs" / "_control" / "torch-gpus.json"
    assert json.loads(kept.read_text())["ids"] == []  # CPU torch
    task = max((demo_dir / "pod" / "outputs" / "_tasks").glob("checkout-*/status.json"), key=lambda p: p.stat().st_mtime)
    ended = datetime.fromisoformat(json.loads(task.read_text())["finished_at"].replace("Z", "+00:00")).timestamp()
    assert kept.stat().st_mtime < ended


TORCH_SITE = next((REPO / ".venv-torch" / "lib").glob("python3*/site-packages"), None) \
    if (REPO / ".venv-torch" / "lib").is_dir() else None


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


@pytest.fixture
def installed(tmp_path):
    """podflow's wheel, built from this tree and installed into a fresh venv of
    /usr/bin/python3 (no checkout, no scripts/); its dependencies come from the test
    venv through a .pth (appended after the wheel's own files, so ``workflow`` is the
    wheel's)."""
    tmp = tmp_path / "wheel"
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".venv-torch", ".podflow", "build", "dist", "*.egg-info", "__pycache__", "tests",
        "artifacts", ".pytest_cache", ".hypothesis"))
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("podflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("train.py", "demo.yaml", "demo-sweep.csv", "configs/tiny.json", "configs/small.json"):
        assert f"workflow/examples/{f}" in names, f
    venv = tmp / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    site = _site_packages(venv)
    (site / "zz_podflow_test_deps.pth").write_text(str(_site_packages(Path(sys.prefix))) + "\n")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import workflow; print(workflow.__file__)"],
                           cwd=tmp, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    return venv


def _demo_from_empty_dir(venv: Path, empty: Path, **extra_env: str):
    empty.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PODFLOW_DEMO_DIR", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra_env)
    proc = subprocess.run([str(venv / "bin" / "wf"), "demo"], cwd=empty, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc, empty


SITECUSTOMIZE = '''\
import os
if os.environ.get("WF_RUN_ID") == "demo-tiny-s1-lr05" and os.environ.get("RANK") == "1":
    print("rank 1 of demo-tiny-s1-lr05 aborting on purpose (test sitecustomize)", flush=True)
    os.abort()
'''


@pytest.mark.skipif(TORCH_SITE is None or not Path("/usr/bin/python3").exists(),
                    reason="needs .venv-torch and /usr/bin/python3")
def test_demo_from_a_wheel_in_a_fresh_venv_and_why_a_run_failed(installed, tmp_path):
    """Without torch: one line saying what to install, exit 2. Then torch "installed" in
    the fresh venv by linking .venv-torch's packages into its site-packages: the
    interpreter running wf has torch (and so does the pod's venv made from it). In that
    demo a rank of one run crashes (SIGABRT, injected through a sitecustomize on
    PYTHONPATH, which every process of the run imports): the demo exits 1 and prints,
    under the table, how that run ended (torchrun's exit status, the rank and its signal)
    and its last lines; the other runs' results are there as usual."""
    proc, _ = _demo_from_empty_dir(installed, tmp_path / "no-torch")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "needs torch" in lines[0] and "pip install torch" in lines[0] and "--python" in lines[0]
    assert "scripts/" not in proc.stderr and proc.stdout == ""

    site = _site_packages(installed)
    for entry in TORCH_SITE.iterdir():
        if entry.suffix != ".pth" and entry.name not in ("__pycache__", "_distutils_hack") \
                and not entry.name.startswith(("pip", "setuptools", "pkg_resources")) \
                and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    proc, empty = _demo_from_empty_dir(installed, tmp_path / "with-torch", PYTHONPATH=str(inject))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "scripts/" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("RUN "))
    states = {x.split()[0]: x.split()[1] for x in lines[head + 1:head + 4]}
    assert states == {"demo-tiny-s0": "success", "demo-tiny-s1-lr05": "failed", "demo-small-s0": "success"}
    demo = empty / ".podflow" / "demo"
    for run in ("demo-tiny-s0", "demo-small-s0"):
        assert (demo / "artifacts" / run / "summary.json").is_file()
    assert lines[head + 4].startswith(
        "--- demo-tiny-s1-lr05: failed: exit code 1; rank 1 killed by SIGABRT (root cause)"), proc.stdout
    tail = lines[head + 5:lines.index(next(x for x in lines if x.startswith("demo finished with failed runs")))]
    assert tail and all(x.startswith("    ") for x in tail)
    assert any("Signal 6 (SIGABRT) received by PID" in x for x in tail), proc.stdout
    log = (demo / "pod" / "outputs" / "demo-tiny-s1-lr05" / "stdout.log").read_text()
    assert "aborting on purpose" in log and "Signal 6 (SIGABRT)" in log  # the whole log is kept
