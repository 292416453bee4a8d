"""The command line: the Invoke collection behind both ``invoke`` (via ``tasks.py``) and
``wf`` (``collection.py``), one module per group of tasks, and the ``wf`` process's
entry (``entry.py``, which may hand the command to a warm server, ``zygote.py``).

Importing this package imports nothing else: ``wf``'s entry lives here and must start
without Invoke. ``ns``, ``GROUPS`` and ``build_collection`` come from ``collection.py``
on first use (``from workflow.cli import ns`` works as before).
"""

from __future__ import annotations

_LAZY = ("ns", "GROUPS", "build_collection")


def __getattr__(name: str):
    if name in _LAZY:
        from workflow.cli import collection

        return getattr(collection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
