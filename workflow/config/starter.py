"""The commented starter config ``wf config-init`` writes (``starter.yaml`` in the package).

The repo's own ``configs/workflow.yaml`` is a copy; a test keeps the two identical and
checks the starter validates, so a new user's first file is always a good one.
"""

from __future__ import annotations

from pathlib import Path

from workflow.errors import ConfigError

STARTER_PATH = Path(__file__).with_name("starter.yaml")


def starter_text() -> str:
    return STARTER_PATH.read_text(encoding="utf-8")


def write_starter(target: Path, shown: str) -> None:
    """Create ``target`` with the starter; never overwrites (exclusive create, no race)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(target, "x", encoding="utf-8") as fh:
            fh.write(starter_text())
    except FileExistsError:
        raise ConfigError(
            f"{shown} already exists; not overwriting it",
            hint="edit it (then 'wf config-validate'), or move it away and run 'wf config-init' again",
        ) from None
