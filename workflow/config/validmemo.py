"""Remembers configs that passed schema validation, so a command whose config did not
change skips loading jsonschema (~50 ms of CPU, a quarter of a warm command).

A digest (sha256 of the schema file and the effective config, canonical JSON) per valid
config, the last 64, in ``$XDG_CACHE_HOME/podflow/valid-configs`` (``~/.cache``). The
config holds no secret (they live in the environment only and never enter it), so
neither does the digest. Only a config that validated without a problem is remembered;
any change to it or to the schema is validated again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

_KEEP = 64


def _path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "podflow" / "valid-configs"


def digest(schema_path: Path, data: Mapping[str, Any]) -> str:
    h = hashlib.sha256(schema_path.read_bytes())
    h.update(json.dumps(data, sort_keys=True, default=str).encode())
    return h.hexdigest()


def known(key: str) -> bool:
    try:
        return key in _path().read_text().split()
    except OSError:
        return False


def remember(key: str) -> None:
    """Add ``key`` (best effort: a cache that cannot be written only costs time)."""
    import tempfile  # only when a config is new: not on every command's start

    path = _path()
    try:
        keys = path.read_text().split() if path.exists() else []
        keys = [k for k in keys if k != key][-(_KEEP - 1):] + [key]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".valid-configs.")
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(keys) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
