"""Resume, not restart (SPEC §8): a run launched again starts from its freshest earlier
files, with ``WF_ATTEMPT``/``WF_RESUME`` and ``sweep.resume_args``; ``sweep-wait``
mirrors running runs into local artifacts meanwhile.

Real parts: the local provider's runner (tmux, podagent) with the test job, then loopback
sshd pods running ``examples/train.py`` under torchrun on CPU, killed mid-way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_sweep_run_helpers import REPO, TORCH_VENV, WF, SweepProject

pytestmark = pytest.mark.skipif(not (TORCH_VENV / "bin" / "torchrun").exists(),
                                reason="needs .venv-torch (bash scripts/setup)")


def _args(sp, run_id):
    return json.loads((sp.outputs / run_id / "args.json").read_text())


def test_a_run_launched_again_gets_its_attempt_resume_args_and_earlier_files(project):
    sp = SweepProject(project, {"sweep": {"resume_args": ["--resume", "--from={out_dir}"]}}, """\
        run_id,config,seed,overrides,notes
        bad,configs/tiny.json,0,fail=3,
        ok,configs/tiny.json,0,,
        """)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    first = _args(sp, "bad")
    assert first["env"]["WF_ATTEMPT"] == "1" and "WF_RESUME" not in first["env"]
    assert "--resume" not in first["argv"]
    assert _args(sp, "ok")["env"]["WF_ATTEMPT"] == "1"

    # retried on the same pod: its own earlier files (file0.txt, ...) are there
    dry = sp.wf("sweep-start", "--retry-failed", "--dry-run", check=0).stdout
    assert f"--resume '--from={sp.outputs / 'bad'}'" in dry or f"--resume --from={sp.outputs / 'bad'}" in dry, dry
    assert "WF_ATTEMPT=2" in dry and "WF_RESUME=1" in dry and "resumes (attempt 2) from its earlier files" in dry
    sp.wf("sweep-start", "--retry-failed", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    second = _args(sp, "bad")
    assert second["argv"][-2:] == ["--resume", f"--from={sp.outputs / 'bad'}"]  # after the overrides
    assert second["env"]["WF_ATTEMPT"] == "2" and second["env"]["WF_RESUME"] == "1"
    assert sp.run_status("bad")["attempt"] == 2 and sp.run_status("bad")["resumed"] is True
    assert "WF_RESUME=1" in (sp.outputs / "bad" / "command.sh").read_text()

    # the pod lost the run's dir (a new pod, a wiped disk): the local copy goes up first
    sp.wf("fetch-run", "bad", check=0)
    shutil.rmtree(sp.outputs / "bad")
    dry = sp.wf("sweep-start", "--dry-run", check=0).stdout
    assert "resumes (attempt 3) from the local copy" in dry, dry
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    third = _args(sp, "bad")
    assert third["env"]["WF_ATTEMPT"] == "3" and third["env"]["WF_RESUME"] == "1"
    assert (sp.outputs / "bad" / "file1.txt").exists()
    assert sp.run_status("bad")["attempt"] == 3
    assert json.loads((sp.outputs / "ok" / "status.json").read_text())["attempt"] == 1  # ok: never again
