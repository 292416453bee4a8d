"""Load the effective config.  STUB: YAML + defaults only; the config issue replaces it.

Signature to keep: ``load_config(path=None, *, env=None, flags=None, cwd=None) -> Config``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from workflow.config.defaults import defaults
from workflow.config.model import Config

DEFAULT_CONFIG = Path("configs") / "workflow.yaml"


def _merge(base: Dict[str, Any], top: Mapping[str, Any]) -> None:
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def fill_remote_paths(data: Dict[str, Any], root: Path) -> None:
    """Provider-dependent defaults for ``remote.*`` (local: under .podflow/local-pod/)."""
    remote = data["remote"]
    if data["pod"]["provider"] == "local":
        base = root / ".podflow" / "local-pod"
        names = {"workdir": "repo", "outputs_dir": "outputs", "data_dir": "data"}
        for key, name in names.items():
            if not remote.get(key):
                remote[key] = str(base / name)
            else:
                p = Path(os.path.expanduser(remote[key]))
                remote[key] = str(p if p.is_absolute() else root / p)
    else:
        base = f"~/podflow/{data['project']}"
        for key, name in {"workdir": "repo", "outputs_dir": "outputs", "data_dir": "data"}.items():
            remote.setdefault(key, None)
            if not remote[key]:
                remote[key] = f"{base}/{name}"


def load_config(
    path: Optional[os.PathLike] = None,
    *,
    env: Optional[Mapping[str, str]] = None,
    flags: Optional[Mapping[str, Any]] = None,
    cwd: Optional[os.PathLike] = None,
) -> Config:
    import yaml

    env = os.environ if env is None else env
    root = Path(cwd) if cwd else Path.cwd()
    cfg_path = Path(path) if path else Path(env.get("WF_CONFIG") or root / DEFAULT_CONFIG)
    if not cfg_path.is_absolute():
        cfg_path = root / cfg_path
    data = defaults()
    used: Optional[Path] = None
    if cfg_path.exists():
        _merge(data, yaml.safe_load(cfg_path.read_text()) or {})
        used = cfg_path
    for dotted, value in (flags or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    fill_remote_paths(data, root)
    return Config(data=data, sources={}, path=used, root=root)
