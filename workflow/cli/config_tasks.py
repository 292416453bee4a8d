"""config tasks (SPEC §3): write the starter config, show the effective one, validate it.

Task bodies import the config package lazily so ``wf --list`` and ``wf --help`` work
with no config file, and with a broken one.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from workflow.cli.boundary import print_json, wf_task

MASK = "****"
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")


def _mask(value: Any) -> Any:
    """Hide a password embedded in a URL (``https://user:tok@host``): never print it."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1" + MASK + "@", value)
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value


def _rows(cfg) -> List[Tuple[str, Any, str]]:
    """(dotted key, value, source) for every key, in schema order; a free mapping's
    entries (``remote.env.NAME``) each on their own row."""
    from workflow.config import schema as S

    rows: List[Tuple[str, Any, str]] = []
    for dotted, node in S.leaves():
        if S.is_secret(node):
            continue
        value = cfg.get(dotted, None)
        if S.is_free_mapping(node) and value:
            for name, sub in value.items():
                key = f"{dotted}.{name}"
                rows.append((key, sub, cfg.sources.get(key, cfg.sources.get(dotted, "default"))))
            continue
        if hasattr(value, "items"):
            value = dict(value)
        rows.append((dotted, value, cfg.sources.get(dotted, "default")))
    return rows


def _secrets(env=None) -> Dict[str, Any]:
    """Each known secret: ``****`` when set in the process environment, else None."""
    from workflow.config.loader import secret_names

    env = os.environ if env is None else env
    return {name: (MASK if env.get(name) else None) for name in sorted(secret_names())}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


@wf_task
def config_init(c):
    """Write the commented starter config (provider: local) to configs/workflow.yaml.

    Honours WF_CONFIG for the target path. Refuses (exit 2) when the file exists.
    """
    from workflow.config.loader import config_path, display_path
    from workflow.config.starter import write_starter

    root = Path.cwd()
    target, _ = config_path(None, os.environ, root)
    shown = display_path(target, root)
    write_starter(target, shown)
    print(f"wrote {shown} (provider: local); edit it, then run 'wf config-validate'")


@wf_task(help={"json": "print one JSON document: path, config, sources, secrets"})
def config_show(c, json=False):
    """Print the effective config, each value with its source; secrets masked."""
    from workflow import runtime

    cfg = runtime.config()
    secrets = _secrets()
    if json:
        print_json({
            "path": str(cfg.path) if cfg.path else None,
            "root": str(cfg.root),
            "config": _mask(_plain(cfg.data)),
            "sources": dict(cfg.sources),
            "secrets": secrets,
        })
        return
    out = sys.stdout
    out.write(f"config: {cfg.path or '(no file: built-in defaults)'}\n")
    rows = [(k, _text(_mask(v)), s) for k, v, s in _rows(cfg)]
    width = max(len(k) for k, _, _ in rows)
    vwidth = min(48, max(len(v) for _, v, _ in rows))
    for key, value, source in rows:
        out.write(f"  {key:<{width}}  {value:<{vwidth}}  {source}\n")
    out.write("secrets (process environment only):\n")
    for name, shown in secrets.items():
        out.write(f"  {name:<{width}}  {shown or '(unset)'}\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@wf_task
def config_validate(c):
    """Check configs/workflow.yaml, the env file and WF__ variables; list every problem (exit 2)."""
    from workflow import runtime

    cfg = runtime.config()
    counts: Dict[str, int] = {}
    for source in cfg.sources.values():
        kind = source.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    words = {"file": "from the file", "env-file": "from the env file", "env": "from the environment", "flag": "from flags"}
    parts = [f"{counts[k]} {w}" for k, w in words.items() if counts.get(k)]
    what = str(cfg.path) if cfg.path else "no config file (built-in defaults)"
    print(f"ok: {what}" + (f" ({', '.join(parts)})" if parts else ""))
