"""Start-up trims for the ``wf`` process: a warm command should cost about the CLI's own
start plus one round trip to the pod, so what the CLI imports is kept to what it uses.

Invoke's ``invoke.context`` imports ``unittest.mock`` at module level for ``MockContext``,
a testing aid ``wf`` never uses; that one import pulls in ``unittest``, ``asyncio`` and
``ssl``: about half of Invoke's import time. ``unittest_mock_deferred()`` lets Invoke
import a stand-in whose ``Mock`` loads the real module when first called, and then takes
the stand-in out of ``sys.modules`` so that any later ``import unittest.mock`` (a test,
the MCP SDK) gets the real module.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from typing import Iterator

_NAME = "unittest.mock"


class _Mock:
    """Stands for ``unittest.mock.Mock`` in ``invoke.context``: makes a real one."""

    def __new__(cls, *args, **kwargs):
        return importlib.import_module(_NAME).Mock(*args, **kwargs)


@contextlib.contextmanager
def unittest_mock_deferred() -> Iterator[None]:
    """Imports inside this block see the stand-in ``unittest.mock`` (see the module docstring)."""
    if _NAME in sys.modules:
        yield
        return
    stand_in = types.ModuleType(_NAME, "wf's stand-in while Invoke imports (workflow/cli/lean.py)")
    stand_in.Mock = _Mock
    sys.modules[_NAME] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_NAME) is stand_in:
            del sys.modules[_NAME]
