"""The ``wf`` program: the same collection as ``invoke`` in this repo. ``entry.py`` runs
it (here, or in a child of the warm server when one serves the command)."""

from __future__ import annotations

import os
import sys

from workflow.cli.collection import ns  # first: it imports Invoke the lean way (lean.py)

from invoke import Program  # noqa: E402

from workflow import __version__  # noqa: E402
from workflow.cli.boundary import strict_parsing  # noqa: E402



class WfProgram(Program):
    """Invoke's program, parsing with the contexts of the tasks the command line names.

    Invoke builds and deep-copies a parser context for every task of the collection on
    each run (~20 ms here, a good part of a warm command); a task the command line does
    not name cannot be parsed anyway ("No idea what ... is", exit 2 as before). Shell
    completion (``--complete``) still gets them all."""

    def _make_parser(self):
        from invoke.parser import Parser, ParserContext

        if self.args.complete.value:
            return super()._make_parser()
        words = set()
        for word in [*self.core.unparsed, self.args.help.value]:
            if isinstance(word, str):
                words.update((word, word.split("=", 1)[-1]))
        unknown_help = self.config.tasks.ignore_unknown_help
        contexts = [ParserContext(name=name, aliases=aliases,
                                  args=self.collection[name].get_arguments(ignore_unknown_help=unknown_help))
                    for name, aliases in self.collection.task_names.items()
                    if name in words or words.intersection(aliases)]
        return Parser(initial=self.initial_context, contexts=contexts)


program = strict_parsing(WfProgram(namespace=ns, version=__version__, name="podflow", binary="wf"))


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:
        # `wf task-list | head`: the reader left; exit quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
