"""The ``wf`` console script: the same collection as ``invoke`` in this repo."""

from __future__ import annotations

import os
import sys

from invoke import Program

from workflow import __version__
from workflow.cli import ns
from workflow.cli.boundary import strict_parsing

program = strict_parsing(Program(namespace=ns, version=__version__, name="podflow", binary="wf"))


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:
        # `wf task-list | head`: the reader left; exit quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
