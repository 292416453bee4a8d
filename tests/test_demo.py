"""`wf demo` end to end: pod-up -> bootstrap -> checkout (of this repository) ->
sweep-start -> sweep-wait -> fetch-all on the local provider, real torchrun DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WF = str(Path(sys.executable).with_name("wf"))


@pytest.mark.skipif(not (REPO / ".venv-torch" / "bin" / "torchrun").exists(), reason="needs .venv-torch")
def test_demo_end_to_end_and_again(tmp_path):
    demo_dir = tmp_path / "demo"
    env = dict(os.environ, PODFLOW_DEMO_DIR=str(demo_dir))
    user_cfg = tmp_path / "elsewhere"
    user_cfg.mkdir()
    proc = subprocess.run([WF, "demo"], cwd=user_cfg, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("pod-up", "bootstrap", "checkout", "sweep-start", "sweep-wait", "fetch-all"):
        assert f"] {step}" in out, step
    table = out[out.index("RUN "):]
    for run in ("demo-tiny-s0", "demo-tiny-s1-lr05", "demo-small-s0"):
        line = next(x for x in table.splitlines() if x.startswith(run + " "))
        assert " success " in line and str(demo_dir / "artifacts" / run) in line
        assert (demo_dir / "artifacts" / run / "summary.json").is_file()
        assert (demo_dir / "artifacts" / run / "metrics.jsonl").is_file()
    state = json.loads((demo_dir / "pod" / "outputs" / "_control" / "workflow_state.json").read_text())
    assert state["state"] == "SWEEP_COMPLETED"
    assert not list(user_cfg.iterdir())  # nothing written where it was started

    again = subprocess.run([WF, "demo", "--json"], cwd=user_cfg, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    doc = json.loads(again.stdout)
    assert doc["ok"] and [r["state"] for r in doc["runs"]] == ["success"] * 3
    assert all(isinstance(r["final_loss"], float) for r in doc["runs"])
    status = json.loads((demo_dir / "pod" / "outputs" / "demo-tiny-s0" / "status.json").read_text())
    assert status["attempt"] == 1  # started over: the runs ran again from scratch
