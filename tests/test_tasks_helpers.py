"""Helpers shared by the tracked-task tests: /proc scans and tmux clean-up."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import List


def live_pids_with(token: str) -> List[int]:
    """Live (non-zombie) processes whose command line contains ``token``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        state = stat[stat.rfind(")") + 2:].split()[0]
        if state in ("Z", "X"):
            continue
        if token in cmdline:
            found.append(int(name))
    return found


def wait_until(predicate, secs: float = 5.0, step: float = 0.02):
    end = time.monotonic() + secs
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


def kill_tmux_server(socket: str, env=None) -> None:
    tmux = shutil.which("tmux")
    if tmux:
        subprocess.run([tmux, "-L", socket, "kill-server"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=env)
