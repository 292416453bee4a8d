"""Where a secret could leak while podflow runs: every process's command line (and the
environment of one user's processes), sampled all along, and the files under a tree.
Shared by the secrets tests (tests/reliability/test_rel_secrets.py, tests/test_demo.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class ProcWatch:
    """Samples ``/proc/*/cmdline`` of every process (and the environment of the pod
    user's processes) until stopped."""

    def __init__(self, pod_uid: int):
        self.pod_uid = pod_uid
        self.cmdlines, self.environs = set(), set()
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    self.cmdlines.add(Path(entry.path, "cmdline").read_bytes())
                    if os.stat(entry.path).st_uid == self.pod_uid:
                        self.environs.add(Path(entry.path, "environ").read_bytes())
                except OSError:
                    pass
            self.samples += 1
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def files_under(root: Path, skip=()):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                yield p


def leaks_in_files(secrets, roots):
    """(files read, "file <path>: <name>" for each secret found) over ``roots``: pairs of a
    tree and the directories in it to leave out."""
    files, leaks = 0, []
    for root, skip in roots:
        for path in files_under(root, skip):
            files += 1
            try:
                blob = path.read_bytes()
            except OSError:
                continue
            leaks += [f"file {path}: {name}" for name, value in secrets.items() if value.encode() in blob]
    return files, leaks


def leaks_in_cmdlines(secrets, watch):
    return [f"cmdline {cmdline[:80]!r}: {name}" for cmdline in watch.cmdlines
            for name, value in secrets.items() if value.encode() in cmdline]
