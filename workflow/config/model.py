"""The effective config: validated values, the source of each, and where it came from.

Everything downstream reads config through ``Config``; it is immutable so that a value
seen once is the value used everywhere in the invocation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional

#: Secrets come only from the process environment (SPEC §2).
SECRET_ENV_NAMES = (
    "REMOTE_SSH_PASSWORD",
    "VAST_API_KEY",
    "RUNPOD_API_KEY",
    "LIUM_API_KEY",
    "WANDB_API_KEY",
    "WF_NOTIFY_URLS",
)

_MISSING = object()


class Section(Mapping):
    """Read-only attribute view of one config section: ``cfg.pod.offer.gpu``."""

    def __init__(self, data: Mapping[str, Any], prefix: str):
        self._data, self._prefix = data, prefix

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(f"config has no key '{self._prefix}{name}'") from None
        return Section(value, f"{self._prefix}{name}.") if isinstance(value, Mapping) else value

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Section({self._prefix.rstrip('.') or '<root>'}: {dict(self._data)!r})"


class _Values(Mapping):
    """``Config.data``: the whole config as a read-only mapping.

    The config has a section named ``data`` (checks, download), which the dataclass
    field of the same name hides from ``cfg.data.checks``; attribute access here falls
    through to that section, so both ``cfg.data["pod"]`` and ``cfg.data.checks`` work.
    """

    def __init__(self, values: Mapping[str, Any]):
        self._values = MappingProxyType(dict(values))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        section = self._values.get("data")
        if isinstance(section, Mapping):
            return getattr(Section(section, "data."), name)
        raise AttributeError(f"config has no key 'data.{name}'")

    def __repr__(self) -> str:
        return f"ConfigValues({dict(self._values)!r})"


@dataclass(frozen=True)
class Config:
    """The effective config of one invocation."""

    data: Mapping[str, Any]
    """Nested values after merging all sources, defaults applied, validated."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Dotted key -> where its value came from (``default``, ``file:PATH:LINE``, ``env:NAME``, ...)."""
    path: Optional[Path] = None
    """The YAML file read, or None when there was none."""
    root: Path = field(default_factory=Path.cwd)
    """Project root: relative local paths are resolved against it."""
    pod_name: str = "p0"
    """Which pod of the pool this config is for (``workflow.pool.pod_config``); p0 by default."""

    def __post_init__(self):
        object.__setattr__(self, "data", _Values(self.data))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def get(self, dotted: str, default: Any = _MISSING) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is _MISSING:
                    raise KeyError(dotted)
                return default
            node = node[part]
        return node

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "data")
        if name in data:
            value = data[name]
            return Section(value, f"{name}.") if isinstance(value, Mapping) else value
        raise AttributeError(name)

    def local_path(self, value: str) -> Path:
        """A path on this machine: ``~`` expanded, relative ones under the project root."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.root / p

    @staticmethod
    def secret(name: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
        """A secret from the process environment only; None (never "") when unset."""
        value = (os.environ if env is None else env).get(name)
        return value or None
