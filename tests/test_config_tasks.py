"""config-init / config-show / config-validate through the real ``wf`` CLI, and the
guarantee that ``wf --help`` and ``wf --list`` need no (working) config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from workflow.config.starter import starter_text

WF = Path(sys.executable).with_name("wf")


def run_wf(root: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WF_")}
    full.update(env or {})
    return subprocess.run([str(WF), *args], cwd=root, env=full, capture_output=True, text=True, timeout=60)


def test_config_init_writes_the_starter_and_refuses_to_overwrite(project):
    proc = run_wf(project, "config-init")
    assert proc.returncode == 0, proc.stderr
    target = project / "configs" / "workflow.yaml"
    assert target.read_text() == starter_text()
    assert "configs/workflow.yaml" in proc.stdout
    target.write_text("project: mine\n")
    proc = run_wf(project, "config-init")
    assert proc.returncode == 2
    assert "configs/workflow.yaml already exists; not overwriting it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert target.read_text() == "project: mine\n"


def test_config_init_creates_configs_dir(tmp_path):
    proc = run_wf(tmp_path, "config-init")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "configs" / "workflow.yaml").is_file()
    assert run_wf(tmp_path, "config-validate").returncode == 0


def test_config_validate_ok(project):
    (project / "configs" / "workflow.yaml").write_text("project: demo\nsweep:\n  on_failure: stop\n")
    (project / "configs" / "workflow.env").write_text("SWEEP_CSV=x.csv\n")
    proc = run_wf(project, "config-validate", env={"WF__PROGRESS": "quiet"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: ")
    assert "2 from the file, 1 from the env file, 1 from the environment" in proc.stdout


def test_config_show_lists_values_with_sources_and_masks_secrets(project):
    (project / "configs" / "workflow.yaml").write_text(
        "project: demo\ncheckout:\n  repo_url: https://me:url-token-123@example.com/r.git\n")
    secret = "s3cr3t-pa55-value"
    proc = run_wf(project, "config-show", env={"REMOTE_SSH_PASSWORD": secret, "WANDB_API_KEY": "wandb-key-xyz",
                                               "RUN_TIMEOUT_SECS": "99"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert secret not in out and "wandb-key-xyz" not in out and "url-token-123" not in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.startswith("  ")}
    assert rows["project"] == ["demo", "file:configs/workflow.yaml:1"]
    assert rows["sweep.run_timeout_secs"] == ["99", "env:RUN_TIMEOUT_SECS"]
    assert rows["pod.port"] == ["22", "default"]
    assert rows["REMOTE_SSH_PASSWORD"] == ["****"]
    assert rows["WANDB_API_KEY"] == ["****"]
    assert rows["VAST_API_KEY"] == ["(unset)"]
    assert rows["checkout.repo_url"][0] == "https://me:****@example.com/r.git"


def test_config_show_json_is_one_document(project):
    (project / "configs" / "workflow.yaml").write_text("project: demo\n")
    secret = "json-secret-value"
    proc = run_wf(project, "config-show", "--json", env={"RUNPOD_API_KEY": secret, "WF_FSM_ENFORCE": "0"})
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout
    doc = json.loads(proc.stdout)  # the whole stdout is one document
    assert doc["config"]["project"] == "demo"
    assert doc["config"]["fsm"]["enforce"] is False
    assert doc["sources"]["fsm.enforce"] == "env:WF_FSM_ENFORCE"
    assert doc["sources"]["project"] == "file:configs/workflow.yaml:1"
    assert doc["secrets"]["RUNPOD_API_KEY"] == "****"
    assert doc["secrets"]["LIUM_API_KEY"] is None
    assert doc["path"].endswith("configs/workflow.yaml")


def test_help_and_list_work_without_config(tmp_path):
    for args in (["--help"], ["--list"]):
        proc = run_wf(tmp_path, *args)
        assert proc.returncode == 0, proc.stderr
    assert "config-validate" in run_wf(tmp_path, "--list").stdout


def test_list_works_with_a_broken_config(project):
    (project / "configs" / "workflow.yaml").write_text("pod: [unclosed\n")
    (project / "configs" / "workflow.env").write_text("garbage line\n")
    proc = run_wf(project, "--list", env={"WF__NOPE": "1"})
    assert proc.returncode == 0, proc.stderr
    for name in ("config-init", "config-show", "config-validate"):
        assert name in proc.stdout
    assert run_wf(project, "config-show", "--help").returncode == 0
