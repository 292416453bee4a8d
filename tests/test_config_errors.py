"""Malformed configs through the real ``wf`` CLI: each gives its own clear message (file,
line, key path, what was expected), exit 2, and no traceback (SPEC §2, §3)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WF = Path(sys.executable).with_name("wf")


def run_wf(root: Path, *args: str, env=None, timeout=60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WF_") and k not in ("REMOTE_SSH_PASSWORD",)}
    full.update(env or {})
    return subprocess.run([str(WF), *args], cwd=root, env=full, capture_output=True, text=True, timeout=timeout)


# (name, yaml text, env-file text, process env, expected fragments of stderr)
CASES = [
    ("misspelt key, did-you-mean at its line",
     "project: p\nsweep:\n  csv: a.csv\n  on_failur: stop\n", None, {},
     ["configs/workflow.yaml:4: sweep.on_failur: unknown key; did you mean 'sweep.on_failure'?"]),
    ("misspelt nested key",
     "pod:\n  provider: vastai\n  offer:\n    gpus: A100\n", None, {},
     ["configs/workflow.yaml:4: pod.offer.gpus: unknown key; did you mean 'pod.offer.gpu'?"]),
    ("key in the wrong section",
     "pod:\n  provider: local\ngpu: A100\n", None, {},
     ["configs/workflow.yaml:3: gpu: unknown key; did you mean 'pod.offer.gpu'?"]),
    ("unknown section",
     "project: p\npods:\n  provider: ssh\n", None, {},
     ["configs/workflow.yaml:2: pods: unknown key; did you mean 'pod'?"]),
    ("unknown key, no close match: lists the valid ones",
     "fsm:\n  zzzzzz: 1\n", None, {},
     ["configs/workflow.yaml:2: fsm.zzzzzz: unknown key; expected one of (in 'fsm'): enforce, state_file"]),
    ("wrong type",
     "pod:\n  provider: ssh\n  port: twenty-two\n", None, {},
     ["configs/workflow.yaml:3: pod.port: expected an integer >= 1 and <= 65535, got 'twenty-two'"]),
    ("bad enum",
     "sweep:\n  on_failure: abort\n", None, {},
     ["configs/workflow.yaml:2: sweep.on_failure: expected one of 'continue', 'stop', got 'abort'"]),
    ("bad provider",
     "pod:\n  provider: aws\n", None, {},
     ["configs/workflow.yaml:2: pod.provider: expected one of 'local', 'ssh', 'lium', 'vastai', 'runpod', got 'aws'"]),
    ("negative timeout",
     "pod:\n  connect_timeout_secs: -3\n", None, {},
     ["configs/workflow.yaml:2: pod.connect_timeout_secs: expected a number > 0, got -3"]),
    ("section that is not a mapping",
     "project: p\npod: local\n", None, {},
     ["configs/workflow.yaml:2: pod: expected a mapping of keys (provider, host"]),
    ("list expected",
     "sweep:\n  args: --lr 0.1\n", None, {},
     ["configs/workflow.yaml:2: sweep.args: expected a list of strings, got '--lr 0.1'"]),
    ("YAML syntax error",
     "project: p\nsweep:\n  csv: [a, b\n  workdir: .\n", None, {},
     ["configs/workflow.yaml:4: YAML syntax error"]),
    ("top level not a mapping",
     "- pod\n- sweep\n", None, {},
     ["configs/workflow.yaml:1: the top level must be a mapping of keys (project, progress, pod"]),
    ("bad data.checks item key",
     "data:\n  checks:\n    - path: train\n      min_file: 3\n", None, {},
     ["configs/workflow.yaml:4: data.checks[0].min_file: unknown key; did you mean 'min_files'?"]),
    ("data.checks item without path, and a negative min_files",
     "data:\n  checks:\n    - path: a\n    - min_files: -1\n", None, {},
     ["configs/workflow.yaml:4: data.checks[1]: missing required key 'path'",
      "configs/workflow.yaml:4: data.checks[1].min_files: expected an integer >= 0, got -1"]),
    ("secret in YAML",
     "pod:\n  provider: ssh\n  password: hunter2-in-yaml\n", None, {},
     ["configs/workflow.yaml:3: pod.password: looks like a secret", "set REMOTE_SSH_PASSWORD in the process environment"]),
    ("secret-looking key anywhere",
     "checkout:\n  github_token: ghp_abc\n", None, {},
     ["configs/workflow.yaml:2: checkout.github_token: looks like a secret"]),
    ("duplicate key",
     "project: a\nproject: b\n", None, {},
     ["configs/workflow.yaml:2: project: key given twice"]),
    ("bad env-file line",
     "project: p\n", "SWEEP_CSV=a.csv\nthis is not an assignment\n", {},
     ["configs/workflow.env:2: expected KEY=VALUE"]),
    ("unterminated quote in env file",
     None, "REPO_URL=\"https://x\n", {},
     ["configs/workflow.env:1: REPO_URL: unterminated double quote"]),
    ("unknown name in env file",
     None, "SWEEP_CVS=a.csv\n", {},
     ["configs/workflow.env:1 (SWEEP_CVS): SWEEP_CVS is not a podflow setting", "did you mean SWEEP_CSV?"]),
    ("secret in env file",
     None, "WANDB_API_KEY=wandb-secret-in-file\n", {},
     ["configs/workflow.env:1 (WANDB_API_KEY): WANDB_API_KEY is a secret", "process environment only"]),
    ("bad WF__ key",
     None, None, {"WF__SWEEP__ON_FAILUR": "stop"},
     ["environment variable WF__SWEEP__ON_FAILUR: sweep.on_failur: unknown key; did you mean WF__SWEEP__ON_FAILURE (sweep.on_failure)?"]),
    ("bad WF__ section",
     None, None, {"WF__SWEPE__CSV": "a.csv"},
     ["environment variable WF__SWEPE__CSV: swepe: unknown key; did you mean WF__SWEEP (sweep)?"]),
    ("bad int from env",
     None, None, {"WF__POD__PORT": "22x"},
     ["environment variable WF__POD__PORT: pod.port: expected an integer >= 1 and <= 65535, got '22x'"]),
    ("bad number from an alias",
     None, None, {"RUN_TIMEOUT_SECS": "ten"},
     ["environment variable RUN_TIMEOUT_SECS: sweep.run_timeout_secs: expected a number > 0 or null, got 'ten'"]),
    ("bad bool from env",
     None, None, {"WF_FSM_ENFORCE": "maybe"},
     ["environment variable WF_FSM_ENFORCE: fsm.enforce: expected true or false (1/0, true/false, yes/no), got 'maybe'"]),
    ("bad enum from env",
     None, None, {"RUN_OUT_MODE": "cloud"},
     ["environment variable RUN_OUT_MODE: sweep.out_mode: expected one of 'durable', 'local_sync', got 'cloud'"]),
    ("bad list from env",
     None, None, {"WF__POD__OFFER__REGIONS": "[US, EU"},
     ["environment variable WF__POD__OFFER__REGIONS: pod.offer.regions: expected a list of strings"]),
    ("WF_CONFIG names a missing file",
     None, None, {"WF_CONFIG": "configs/nope.yaml"},
     ["configs/nope.yaml: config file not found (set by WF_CONFIG)"]),
]


@pytest.mark.parametrize("name,yaml_text,env_text,env,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_config_exits_2_with_a_clear_message(project, name, yaml_text, env_text, env, expected):
    if yaml_text is not None:
        (project / "configs" / "workflow.yaml").write_text(yaml_text)
    if env_text is not None:
        (project / "configs" / "workflow.env").write_text(env_text)
    proc = run_wf(project, "config-validate", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    for leaked in ("hunter2-in-yaml", "wandb-secret-in-file", "ghp_abc"):
        assert leaked not in proc.stderr


def test_every_problem_is_reported_in_line_order(project):
    (project / "configs" / "workflow.yaml").write_text(textwrap.dedent("""\
        project: p
        progress: loud
        pod:
          provider: ssh
          prot: 22
        sweep:
          max_retries: -1
        """))
    proc = run_wf(project, "config-validate")
    assert proc.returncode == 2
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("configs/")]
    assert [ln.split(":")[1] for ln in lines] == ["2", "5", "7"], proc.stderr
    assert "3 problems" in proc.stderr
    assert "did you mean 'pod.port'?" in lines[1]


def test_broken_config_also_stops_other_commands_with_exit_2(project):
    (project / "configs" / "workflow.yaml").write_text("sweep:\n  on_failure: abort\n")
    proc = run_wf(project, "config-show")
    assert proc.returncode == 2 and "sweep.on_failure" in proc.stderr and "Traceback" not in proc.stderr
