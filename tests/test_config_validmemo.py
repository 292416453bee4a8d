"""A config that validated once is not validated again (jsonschema not even imported),
while a bad one, or any change, is always checked."""

from __future__ import annotations

import subprocess
import sys

CODE = ("import sys\n"
        "from workflow.config import load_config\n"
        "from workflow.errors import PodflowError\n"
        "try:\n"
        "    load_config()\n"
        "    print('ok', 'jsonschema' in sys.modules)\n"
        "except PodflowError as exc:\n"
        "    print('bad', exc)\n")


def load(project):
    return subprocess.run([sys.executable, "-c", CODE], cwd=project, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_valid_config_is_validated_once(project):
    (project / "configs" / "workflow.yaml").write_text("project: memo\npod:\n  keepalive_secs: 30\n")
    assert load(project) == "ok True"
    assert load(project) == "ok False"
    (project / "configs" / "workflow.yaml").write_text("project: memo\npod:\n  keepalive_secs: 31\n")
    assert load(project) == "ok True"  # a change is validated again


def test_a_bad_config_is_never_remembered(project):
    (project / "configs" / "workflow.yaml").write_text("project: memo\npod:\n  keepalive_secs: -1\n")
    for _ in range(2):
        out = load(project)
        assert out.startswith("bad") and "keepalive_secs" in out
