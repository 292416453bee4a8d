"""Figures of the reliability suite: each test records what it injected and tried.

``record(kind, what, count=1, survived=None)`` adds to a per-run tally; with
``WF_RELIABILITY_FIGURES=path`` set, the tally is written there as JSON at the end of
the session (``tests/reliability/FIGURES.md`` was made from such a file). Under
pytest-xdist each worker hands its tally to the controller, which writes them all
(``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

TALLY: List[Dict[str, Any]] = []


def record(kind: str, what: str, count: int = 1, survived: Any = None, **extra: Any) -> None:
    TALLY.append({"kind": kind, "what": what, "count": count, "survived": survived, **extra})


def write(tally: Optional[List[Dict[str, Any]]] = None) -> None:
    """Write ``tally`` (this process's by default) to ``$WF_RELIABILITY_FIGURES``."""
    path = os.environ.get("WF_RELIABILITY_FIGURES")
    tally = TALLY if tally is None else tally
    if path and tally:
        with open(path, "w") as fh:
            json.dump(tally, fh, indent=1)
