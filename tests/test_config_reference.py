"""README's config reference agrees with the schema (generated, then checked)."""

from __future__ import annotations

from pathlib import Path

from workflow.config import schema as S
from workflow.config.reference import documented_keys, reference_markdown, region

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_schema_key_is_documented_and_nothing_else():
    documented = documented_keys(README.read_text())
    keys = [k for k, _ in S.leaves()]
    assert not set(keys) - set(documented), f"undocumented keys: {sorted(set(keys) - set(documented))}"
    assert not set(documented) - set(keys), f"documented but not in the schema: {sorted(set(documented) - set(keys))}"
    assert len(documented) == len(set(documented)), "a key documented twice"


def test_readme_region_is_the_generated_table():
    assert region(README.read_text()) == reference_markdown(), (
        "README's config reference is stale: run `python -m workflow.config.reference --write README.md`")


def test_table_rows_carry_type_default_and_meaning():
    text = region(README.read_text())
    assert "| `sweep.on_failure` | one of 'continue', 'stop' | `\"continue\"` |  |" in text
    assert "| `fsm.enforce` | true or false | `true` | `WF_FSM_ENFORCE` |" in text
    assert "| `pod.password` | secret | env only: `REMOTE_SSH_PASSWORD` |" in text
