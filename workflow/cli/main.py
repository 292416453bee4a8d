"""The ``wf`` console script: the same collection as ``invoke`` in this repo."""

from __future__ import annotations

from invoke import Program

from workflow import __version__
from workflow.cli import ns

program = Program(namespace=ns, version=__version__, name="podflow", binary="wf")


def main() -> None:
    program.run()
