"""docs/reference.md: the generated parts equal what the code generates now (every task
and flag, every config key with its default and alias), every ``--json`` command has a
section whose keys cover what the command really prints, and the README points at it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.cli.reference import REGENERATE, REGIONS, region, render
from workflow.config import schema as S

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reference.md"
WF = str(Path(sys.executable).with_name("wf"))
STALE = f"docs/reference.md is stale: run `{REGENERATE}` and commit it"


def wf(*args, cwd, check=0):
    p = subprocess.run([WF, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == check, f"wf {' '.join(args)}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def listed_tasks(cwd) -> list:
    out = wf("--list", cwd=cwd).stdout
    return re.findall(r"^  ([a-z][a-z0-9-]*)\s", out, re.M)


def test_generated_regions_are_what_the_code_generates():
    text = DOC.read_text()
    assert render(text) == text, STALE


def test_every_task_of_wf_list_and_every_flag_is_documented(tmp_path):
    commands = region(DOC.read_text(), "commands")
    names = listed_tasks(tmp_path)
    assert len(names) > 20
    missing = [n for n in names if f"#### `wf {n}`\n" not in commands]
    assert not missing, f"commands missing: {missing}; {STALE}"
    from workflow.cli import ns

    for n in names:
        section = commands.split(f"#### `wf {n}`\n")[1].split("\n#### ")[0]
        for arg in ns[n].get_arguments():
            assert f"`--{arg.name.replace('_', '-')}`" in section, f"{n} --{arg.name}: {STALE}"


def test_every_config_key_is_documented_with_its_default_and_alias():
    table = region(DOC.read_text(), "config")
    documented = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    keys = [k for k, _ in S.leaves()]
    assert sorted(documented) == sorted(keys), STALE
    assert "| `sweep.on_failure` | one of 'continue', 'stop' | `\"continue\"` |  |" in table
    assert "| `fsm.enforce` | true or false | `true` | `WF_FSM_ENFORCE` |" in table
    assert "| `pod.password` | secret | env only: `REMOTE_SSH_PASSWORD` |" in table


def json_sections() -> dict:
    text = DOC.read_text().split("\n## JSON outputs\n")[1]
    parts = re.split(r"^#### `wf ([a-z0-9-]+) --json`\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_json_command_has_a_json_section(tmp_path):
    from workflow.cli import ns

    with_json = {n for n in listed_tasks(tmp_path) if any(a.name == "json" for a in ns[n].get_arguments())}
    sections = set(json_sections())
    assert not with_json - sections, (
        f"--json commands without a section under '## JSON outputs' in docs/reference.md: "
        f"{sorted(with_json - sections)} (write one by hand: its top-level keys)")
    assert not sections - with_json, f"sections for commands without --json: {sorted(sections - with_json)}"


def _section_text(command: str, sections: dict, seen=()) -> str:
    """A section plus those it refers to ("as in `task-run --json`")."""
    text = sections[command]
    for other in re.findall(r"`([a-z0-9-]+) --json`", text):
        if other in sections and other not in seen and other != command:
            text += _section_text(other, sections, (*seen, command))
    return text


def _undocumented(command: str, doc: dict) -> list:
    section = _section_text(command, json_sections())
    return [k for k in doc if f"`{k}`" not in section and f'"{k}"' not in section]


def test_the_json_sections_cover_what_the_commands_print(project):
    """Run the --json commands on the local provider; every top-level key they print is
    named in the command's section (a new key fails here until it is documented)."""
    root = project
    wf("config-init", cwd=root)
    (root / "data" / "set").mkdir(parents=True)
    (root / "data" / "set" / "a.txt").write_text("x\n")
    wf("sweep-csv-template", cwd=root)
    runs = [
        ("config-show",), ("sweep-validate",), ("pod-up",), ("check-connection",), ("pod-status",),
        ("fsm-status",), ("push-data", "data/set"), ("task-run", "--id", "t1", "--cmd", "echo hi"),
        ("task-wait", "--id", "t1"), ("task-status", "--id", "t1"), ("task-logs", "--id", "t1"), ("task-list",),
        ("task-run", "--id", "t2", "--cmd", "sleep 60"), ("task-kill", "--id", "t2"),
        ("sweep-status",), ("fetch-all",),
    ]
    socket = None
    try:
        problems = {}
        for args in runs:
            doc = json.loads(wf(*args, "--json", cwd=root).stdout)
            socket = socket or doc.get("tmux_socket")
            missing = _undocumented(args[0], doc)
            if missing:
                problems[args[0]] = missing
        assert not problems, f"keys printed but not in docs/reference.md's JSON section: {problems}"
    finally:
        if socket and shutil.which("tmux"):
            subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def test_an_undocumented_key_is_caught():
    assert _undocumented("fsm-status", {"state": "INIT", "brand_new_key": 1}) == ["brand_new_key"]


def test_readme_links_the_reference_and_names_nothing_outside_the_repository():
    readme = (REPO / "README.md").read_text()
    assert "docs/reference.md" in readme
    assert "planning repo" not in readme and "SPEC.md" not in readme
    for link in re.findall(r"\]\(([^)]+)\)", readme):
        if not link.startswith(("http://", "https://", "#")):
            assert (REPO / link.split("#")[0]).exists(), link
    quickstart = readme.split("## Quickstart")[1].split("\n## ")[0]
    commands = [l.strip().split("  ")[0].strip() for l in quickstart.splitlines() if l.startswith("    ")]
    assert commands == ["bash scripts/demo", "bash scripts/test"]
