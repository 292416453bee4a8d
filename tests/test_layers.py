"""Layers import downward only: errors < agent, config < transport < the rest < cli.

Two checks: every ``import`` statement in a lower layer's files (function-level ones
included, where a loop hides best) names only layers below it; and each lower-layer
module imported alone in a fresh interpreter leaves no upper layer in ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "workflow"

#: layer -> the workflow packages/modules it may import (besides itself).
ALLOWED = {
    "workflow.errors": set(),
    "workflow.unixsock": set(),  # stdlib only: the wf entry's first import
    "workflow.agent": set(),  # stdlib only: it is shipped to the pod
    "workflow.config": {"workflow.errors"},
    "workflow.transport": {"workflow.errors", "workflow.config", "workflow.agent", "workflow.unixsock"},
}
UPPER = ("workflow.providers", "workflow.runtime", "workflow.session", "workflow.cli", "workflow.prepare",
         "workflow.sweep", "workflow.tracked", "workflow.agent_client", "workflow.fsm", "workflow.results")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_files(layer: str):
    base = PKG.parent.joinpath(*layer.split("."))
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "workflow":
                yield from (f"workflow.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_statement_reaches_up(layer):
    bad = []
    for path in _layer_files(layer):
        for name in _imports(path):
            if not _within(name, "workflow") or _within(name, layer):
                continue
            if not any(_within(name, ok) for ok in ALLOWED[layer]):
                bad.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def _lower_modules():
    return [_module_name(p) for layer in sorted(ALLOWED) for p in _layer_files(layer)
            if not p.name == "__main__.py"]


def test_each_lower_module_alone_loads_no_upper_layer():
    code = (
        "import importlib, json, sys\n"
        "mod = sys.argv[1]\n"
        "importlib.import_module(mod)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('workflow'))))\n"
    )
    bad = []
    for mod in _lower_modules():
        out = subprocess.run([sys.executable, "-c", code, mod], capture_output=True, text=True, check=True)
        loaded = json.loads(out.stdout)
        up = [m for m in loaded if any(_within(m, u) for u in UPPER)]
        if up:
            bad.append(f"{mod} loads {', '.join(up)}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_function_level_import(tmp_path):
    """The AST scan would have caught transport -> providers hidden inside a function."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from workflow.providers import current_endpoint\n")
    assert "workflow.providers" in list(_imports(f))
