"""Thin: the podflow task collection for ``invoke`` (same as the ``wf`` console script)."""

from workflow.cli import ns  # noqa: F401
