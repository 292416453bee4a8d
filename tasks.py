"""Thin: the podflow task collection for ``invoke`` (same as the ``wf`` console script).

Run as ``invoke ...`` from the project root, the running Invoke program is given the
same parse-error handling as ``wf`` (bad flags and unknown tasks exit 2, SPEC §3)."""

from invoke.main import program as _invoke_program

from workflow.cli import ns  # noqa: F401
from workflow.cli.boundary import strict_parsing

strict_parsing(_invoke_program)
