"""rsync's remote shell through the pod's kept connection (stdlib only, started by rsync):

    rsync -e "python -m workflow.transport.kept.rsh SOCK N SSH-ARGV(N words)" SRC DEST

rsync appends ``[-l USER] HOST COMMAND...``; the command (joined by spaces, as ``ssh``
does) runs on the kept connection with stdin and stdout relayed, so a fetch opens no new
SSH login. When the kept connection cannot take it before it ran, this becomes the
given ``ssh`` (``exec``), exactly what rsync would have run without it. Exit status:
the command's, or 255 when the connection is lost (as ``ssh``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import List

from workflow.transport.kept import wire

#: Heartbeats come every HEARTBEAT_SECS while the command is quiet; this much silence
#: means the kept connection is gone (rsync then fails as with a dead ssh).
_SILENCE_SECS = 30.0


def _fallback(ssh: List[str], rest: List[str]) -> None:
    os.execvp(ssh[0], ssh + rest)


def main(argv: List[str]) -> int:
    sock_path, n = Path(argv[0]), int(argv[1])
    ssh, rest = argv[2:2 + n], argv[2 + n:]
    words = list(rest)
    if words[:1] == ["-l"]:
        words = words[2:]
    command = " ".join(words[1:])
    try:
        sock = wire.connect(sock_path, 2.0)
    except OSError:
        _fallback(ssh, rest)
    try:
        wire.send_json(sock, b"Q", {"op": "stream", "command": command, "cred": wire.credential()})
        kind, payload = wire.recv(sock)
    except (OSError, wire.Closed):
        kind = b""
    if kind != b"A":
        sock.close()
        _fallback(ssh, rest)
    sending = threading.Lock()

    def feed() -> None:
        try:
            while True:
                data = os.read(0, 65536)
                with sending:
                    wire.send(sock, b"I" if data else b"D", data)
                if not data:
                    return
        except OSError:
            return

    for stdio in (0, 1, 2):  # rsync hands over non-blocking pipes; this relays with blocking I/O
        try:
            os.set_blocking(stdio, True)
        except OSError:
            pass
    threading.Thread(target=feed, daemon=True).start()
    sock.settimeout(_SILENCE_SECS)
    try:
        while True:
            kind, payload = wire.recv(sock)
            if kind == b"O":
                os.write(1, payload)
            elif kind == b"E":
                os.write(2, payload)
            elif kind == b"S":
                return int(json.loads(payload)["code"])
            elif kind == b"F":
                sys.stderr.write(f"podflow: connection lost: {json.loads(payload).get('message')}\n")
                return 255
    except (OSError, wire.Closed) as exc:
        sys.stderr.write(f"podflow: the kept connection ended ({exc})\n")
        return 255


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
