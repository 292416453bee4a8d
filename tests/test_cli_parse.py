"""Bad flags and unknown tasks are bad input (SPEC §3: exit 2), with a "did you mean",
through the real ``wf`` console script and the real ``invoke`` run from the project root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(binary: str, *args: str, cwd: Path):
    return subprocess.run([str(BIN / binary), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["wf", "invoke"])
def cli(request, tmp_path):
    """(binary, cwd): ``wf`` from an empty directory, ``invoke`` from the project root."""
    return request.param, (tmp_path if request.param == "wf" else REPO)


def test_unknown_flag_exits_2(cli):
    binary, cwd = cli
    p = run(binary, "config-validate", "--no-such-flag", cwd=cwd)
    assert p.returncode == 2, p.stderr
    assert "unknown flag '--no-such-flag' for config-validate" in p.stderr
    assert f"'{binary} --help config-validate'" in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_unknown_task_exits_2(cli):
    binary, cwd = cli
    p = run(binary, "no-such-task", cwd=cwd)
    assert p.returncode == 2, p.stderr
    assert "'no-such-task' is not a task" in p.stderr and f"'{binary} --list'" in p.stderr
    assert "did you mean" not in p.stderr


def test_misspelt_task_suggests_the_task(cli):
    binary, cwd = cli
    p = run(binary, "sweep-stauts", cwd=cwd)
    assert p.returncode == 2, p.stderr
    assert "did you mean 'sweep-status'?" in p.stderr


def test_misspelt_flag_suggests_the_flag(cli):
    binary, cwd = cli
    p = run(binary, "sweep-status", "--jsno", cwd=cwd)
    assert p.returncode == 2, p.stderr
    assert "unknown flag '--jsno' for sweep-status" in p.stderr
    assert "did you mean '--json'?" in p.stderr


def test_other_parse_errors_exit_2_and_name_the_flag(tmp_path):
    p = run("wf", "task-run", "--id", cwd=tmp_path)
    assert p.returncode == 2 and "Flag '--id' needed value" in p.stderr, p.stderr
    p = run("wf", "fetch-run", cwd=tmp_path)
    assert p.returncode == 2 and "'run_id'" in p.stderr, p.stderr
    p = run("wf", "--help", "sweep-stauts", cwd=tmp_path)
    assert p.returncode == 2 and "did you mean 'sweep-status'?" in p.stderr, p.stderr
    p = run("wf", "--lsit", cwd=tmp_path)
    assert p.returncode == 2 and "did you mean '--list'?" in p.stderr, p.stderr


def test_good_input_is_unchanged(cli):
    binary, cwd = cli
    p = run(binary, "--list", cwd=cwd)
    assert p.returncode == 0 and "sweep-status" in p.stdout, p.stderr
    p = run(binary, "--help", "sweep-status", cwd=cwd)
    assert p.returncode == 0 and "--json" in p.stdout, p.stderr


def test_json_is_indented_for_a_terminal_and_one_line_for_a_pipe(monkeypatch, capsys):
    import io
    import json

    from workflow.cli.boundary import print_json

    doc = {"b": [1, {"c": None}], "a": "x"}

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, lines in ((io.StringIO(), 1), (Terminal(), 9)):
        monkeypatch.setattr(sys, "stdout", stream)
        print_json(doc)
        text = stream.getvalue()
        assert json.loads(text) == doc and text.count("\n") == lines and text.index('"a"') < text.index('"b"')
