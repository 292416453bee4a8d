"""The README's config reference, generated from ``schema.json`` + ``defaults.py``.

Generated, not hand-written, so the table cannot drift from the schema; a test fails
when README.md's region differs from ``reference_markdown()``. Regenerate with::

    python -m workflow.config.reference --write README.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

from workflow.config import schema as S
from workflow.config.aliases import ALIASES
from workflow.config.defaults import DEFAULTS

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"

INTRO = """\
Generated from `workflow/config/schema.json` and `workflow/config/defaults.py`
(`python -m workflow.config.reference --write README.md`). Sources, lowest to highest:
built-in defaults < `configs/workflow.yaml` (or `WF_CONFIG`) < `configs/workflow.env`
beside it (or `WF_ENV_FILE`; `KEY=VALUE` lines, never run by a shell) < the process
environment < task flags. Every key can be set from the environment as
`WF__SECTION__KEY=value` (e.g. `WF__SWEEP__ON_FAILURE=stop`; inside `remote.env` the
name keeps its case: `WF__REMOTE__ENV__HF_HOME=/data/hf`); env values are converted to
the key's type (`1/0/true/false/yes/no`, numbers, `null`, lists and mappings as JSON or
YAML flow). The seed names in the *alias* column work too; when a `WF__` variable and
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
    """The whole README region between the markers (markers excluded)."""
    lines = [INTRO, "| key | type | default | alias | meaning |", "|---|---|---|---|---|"]
    for r in rows():
        lines.append(f"| {r['key']} | {r['type']} | {r['default']} | {r['alias']} | {r['meaning']} |")
    return "\n".join(lines) + "\n"


def region(text: str) -> str:
    """The text between the markers of a README (raises ValueError when absent)."""
    m = re.search(re.escape(START) + r"\n?(.*?)" + re.escape(END), text, re.S)
    if not m:
        raise ValueError(f"no {START} ... {END} region")
    return m.group(1)


def documented_keys(text: str) -> List[str]:
    """The keys in the first column of the README's table."""
    return re.findall(r"^\| `([^`]+)` \|", region(text), re.M)


def write(readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    region(text)  # markers must exist
    new = re.sub(re.escape(START) + r".*?" + re.escape(END),
                 lambda _: START + "\n" + reference_markdown().lstrip("\n") + END, text, flags=re.S)
    readme.write_text(new, encoding="utf-8")


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", help="replace the region in this file")
    args = parser.parse_args(argv)
    if args.write:
        write(Path(args.write))
    else:
        sys.stdout.write(reference_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
