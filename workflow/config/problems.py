"""Where a config value came from, and the problems found in it.

Every value the loader sees carries an ``Origin``; it becomes the value's entry in
``Config.sources`` and the "where" of any problem with it. The loader collects all
problems and raises them together (sorted by file and line) so one run of
``wf config-validate`` shows everything to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

from workflow.errors import ConfigError

#: Sort order of sources in an error report: the order they are read in.
_RANK = {"default": 0, "file": 1, "env-file": 2, "env": 3, "flag": 4}


@dataclass(frozen=True)
class Origin:
    """One place a value can come from."""

    kind: str
    """``default``, ``file``, ``env-file``, ``env`` or ``flag``."""
    path: Optional[str] = None
    """The file as shown to the user (relative to the project root when inside it)."""
    line: Optional[int] = None
    """1-based line in ``path``."""
    var: Optional[str] = None
    """The environment variable (``env``, ``env-file``) or flag name."""

    @property
    def source(self) -> str:
        """The ``Config.sources`` spelling: ``file:PATH:LINE``, ``env:VAR``, ``flag``..."""
        if self.kind in ("file", "env-file"):
            return f"{self.kind}:{self.path}:{self.line}"
        if self.kind == "env":
            return f"env:{self.var}"
        return self.kind

    @property
    def where(self) -> str:
        """The start of an error line: ``configs/workflow.yaml:12``."""
        if self.kind == "file":
            return f"{self.path}:{self.line}" if self.line else str(self.path)
        if self.kind == "env-file":
            return f"{self.path}:{self.line}" + (f" ({self.var})" if self.var else "")
        if self.kind == "env":
            return f"environment variable {self.var}"
        if self.kind == "flag":
            return f"flag {self.var}" if self.var else "flag"
        return "built-in default"

    def at_line(self, line: Optional[int]) -> "Origin":
        return Origin(self.kind, self.path, line, self.var)

    def sort_key(self) -> Tuple[int, str, int]:
        return (_RANK.get(self.kind, 9), self.path or self.var or "", self.line or 0)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: where, which key, what was expected."""

    origin: Origin
    key: Optional[str]
    message: str

    def __str__(self) -> str:
        key = f"{self.key}: " if self.key else ""
        return f"{self.origin.where}: {key}{self.message}"


class ConfigProblems(ConfigError):
    """All problems found in one load; a ``ConfigError`` (exit 2) listing each on a line."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: List[Problem] = sorted(problems, key=lambda p: p.origin.sort_key())
        if len(self.problems) == 1:
            text = f"invalid config: {self.problems[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            text = f"invalid config ({len(self.problems)} problems):\n{lines}"
        super().__init__(text, hint="after fixing, 'wf config-validate' checks again")
