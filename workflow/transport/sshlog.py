"""The SSH library's own log stays off the terminal unless asked for (``wf --debug``).

paramiko logs from its transport thread. A port that accepts TCP before its sshd
answers (a rented pod behind a port mapping, while it boots) makes it log
``Exception (client): Error reading SSH protocol banner`` and the traceback
(``EOFError``) at ERROR, although podflow handles that failure: it waits and tries
again. With no handler configured anywhere, Python's last-resort handler prints such
records on stderr, between podflow's progress lines. A ``NullHandler`` on the
``paramiko`` logger ends that at the source. Records still propagate to the root
logger, so ``wf --debug`` (Invoke's flag, also ``INVOKE_DEBUG=1``: DEBUG logging on
stderr) shows every one of them.
"""

from __future__ import annotations

import logging


class _Quiet(logging.NullHandler):
    """The handler podflow adds (a type of its own, so adding it twice is a no-op)."""


def quiet_ssh_library() -> None:
    """Keep paramiko's log records off stderr unless logging was configured (``--debug``)."""
    logger = logging.getLogger("paramiko")
    if not any(isinstance(h, _Quiet) for h in logger.handlers):
        logger.addHandler(_Quiet())
