"""The config reference (a region of ``docs/reference.md``), generated from
``schema.json`` + ``defaults.py`` + the alias table so it cannot drift from them;
``workflow.cli.reference`` writes it and ``tests/test_reference.py`` checks it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from workflow.config import schema as S
from workflow.config.aliases import ALIASES
from workflow.config.defaults import DEFAULTS

INTRO = """\
Generated from `workflow/config/schema.json`, `workflow/config/defaults.py` and
`workflow/config/aliases.py`. Sources, lowest to highest:
built-in defaults < `configs/workflow.yaml` (or `WF_CONFIG`) < `configs/workflow.env`
beside it (or `WF_ENV_FILE`; `KEY=VALUE` lines, never run by a shell) < the process
environment < task flags. Every key can be set from the environment as
`WF__SECTION__KEY=value` (e.g. `WF__SWEEP__ON_FAILURE=stop`; inside `remote.env` the
name keeps its case: `WF__REMOTE__ENV__HF_HOME=/data/hf`); env values are converted to
the key's type (`1/0/true/false/yes/no`, numbers, `null`, lists and mappings as JSON or
YAML flow). The names in the *alias* column (those of the original bash workflow) work too; when a `WF__` variable and
an alias set the same key in the same source, `WF__` wins. Keys marked *secret* are read
from the process environment only and refused in any file.
"""


def _default(dotted: str) -> Any:
    node: Any = DEFAULTS
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows() -> List[Dict[str, str]]:
    aliases = {key: name for name, key in ALIASES.items()}
    out = []
    for dotted, node in S.leaves():
        if S.is_secret(node):
            kind = "secret"
            default = "env only: " + ", ".join(f"`{n}`" for n in node.get("x-env", []))
        else:
            kind = S.describe_type(node)
            default = f"`{json.dumps(_default(dotted))}`"
        alias = f"`{aliases[dotted]}`" if dotted in aliases else ""
        out.append({"key": f"`{dotted}`", "type": _cell(kind), "default": _cell(default),
                    "alias": alias, "meaning": _cell(node.get("description", ""))})
    return out


def reference_markdown() -> str:
    """The intro and the table of every key."""
    lines = [INTRO, "| key | type | default | alias | meaning |", "|---|---|---|---|---|"]
    for r in rows():
        lines.append(f"| {r['key']} | {r['type']} | {r['default']} | {r['alias']} | {r['meaning']} |")
    return "\n".join(lines) + "\n"
