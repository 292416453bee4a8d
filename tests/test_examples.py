"""examples/train.py, run for real with CPU torch (the separate .venv-torch).

Create it with:
    /usr/bin/python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 numpy
or point WF_TORCH_PYTHON at a python that has torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TORCH_PY = Path(os.environ.get("WF_TORCH_PYTHON") or REPO / ".venv-torch" / "bin" / "python")
TORCHRUN = TORCH_PY.parent / "torchrun"

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not TORCH_PY.exists(), reason=f"no torch venv at {TORCH_PY} (see this module's docstring)"),
]


def run(argv, tmp_path, env=None, timeout=120):
    full_env = {
        "PATH": f"{TORCH_PY.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),  # torchrun leaves torchelastic_* dirs in TMPDIR
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run([str(a) for a in argv], cwd=EXAMPLES, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "run-a"
    t0 = time.monotonic()
    r = run([TORCHRUN, "--standalone", "--nproc_per_node=2", "train.py", "configs/tiny.json", "--seed=3",
             'note=a, "b" $(touch pwned); x'],
            tmp_path, env={"WF_OUT_DIR": str(out), "WF_RUN_ID": "run-a"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    lines = json_lines(r.stdout)
    start = lines[0]
    assert start["event"] == "start" and start["world_size"] == 2 and start["backend"] == "gloo"
    assert start["run_id"] == "run-a" and start["seed"] == 3 and start["resumed"] is False
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == [1, 5, 10, 15, 20]  # printed once: rank 0 only
    metrics = json_lines((out / "metrics.jsonl").read_text())
    assert metrics == lines
    assert (out / "checkpoint.pt").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(steps[-1]["loss"], abs=1e-5)
    assert summary["final_loss"] < steps[0]["loss"]  # it learns
    assert summary["steps"] == 20 and summary["world_size"] == 2
    assert summary["note"] == 'a, "b" $(touch pwned); x'
    assert not (EXAMPLES / "pwned").exists()


def test_resumes_from_checkpoint_and_keeps_summary_keys(tmp_path):
    out = tmp_path / "r"
    r = run([TORCH_PY, "train.py", "configs/tiny.json", f"--out_dir={out}", "steps=6", "ckpt_every=4", "log_every=1"],
            tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json_lines(r.stdout)[0]["backend"] == "none"  # plain python: world size 1, no process group
    summary = json.loads((out / "summary.json").read_text())
    summary["ok"] = True  # the runner's own key
    (out / "summary.json").write_text(json.dumps(summary))

    r = run([TORCH_PY, "train.py", "configs/tiny.json", f"--out_dir={out}", "steps=10", "log_every=1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = json_lines(r.stdout)
    assert lines[0]["event"] == "start" and lines[0]["resumed"] is True and lines[0]["step"] == 6
    assert [x["step"] for x in lines if "loss" in x] == [7, 8, 9, 10]
    all_steps = [x["step"] for x in json_lines((out / "metrics.jsonl").read_text()) if "loss" in x]
    assert all_steps == list(range(1, 11))  # appended, not truncated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True and summary["steps"] == 10 and summary["resumed_from_step"] == 6


def test_fail_exits_non_zero_under_torchrun(tmp_path):
    r = run([TORCHRUN, "--standalone", "--nproc_per_node=2", "train.py", "configs/tiny.json",
             f"--out_dir={tmp_path / 'f'}", "fail=1"], tmp_path)
    assert r.returncode == 1
    assert "failing on purpose" in r.stderr
    assert not (tmp_path / "f" / "summary.json").exists()


def test_fail_flag_sleep_and_bad_override_with_python(tmp_path):
    r = run([TORCH_PY, "train.py", "configs/tiny.json", f"--out_dir={tmp_path / 'g'}", "--fail"], tmp_path)
    assert r.returncode != 0 and "failing on purpose" in r.stderr
    t0 = time.monotonic()
    r = run([TORCH_PY, "train.py", "configs/tiny.json", f"--out_dir={tmp_path / 's'}", "steps=3", "sleep_secs=0.4"],
            tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - t0 >= 1.2
    r = run([TORCH_PY, "train.py", "configs/tiny.json", f"--out_dir={tmp_path / 'b'}", "stesp=3"], tmp_path)
    assert r.returncode != 0 and "unknown config key 'stesp'" in r.stderr
