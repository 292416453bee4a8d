"""Host keys pinned on first use in the project's known_hosts (``pod.known_hosts``).

The file is OpenSSH's format (``[host]:port`` for ports other than 22), so ``ssh`` and
``rsync -e ssh`` read it too (``-o UserKnownHostsFile=...``). The first connection to a
host appends its key; later connections must present the same key, or the connection
is refused with ``HostKeyMismatch`` naming both fingerprints and the command that
forgets the old key.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shlex
import sys
from pathlib import Path
from typing import Iterator, Optional

import paramiko

from workflow.errors import HostKeyMismatch


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH (and paramiko) name a host in known_hosts."""
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


def repin_command(name: str, display_path: str) -> str:
    return f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(display_path)}"


def mismatch_error(name: str, presented: paramiko.PKey, pinned: paramiko.PKey, display_path: str) -> HostKeyMismatch:
    return HostKeyMismatch(
        f"host key of {name} has CHANGED: it presented {presented.get_name()} {fingerprint(presented)}, "
        f"but {display_path} pins {pinned.get_name()} {fingerprint(pinned)}. "
        "Refusing to connect: this is either a rebuilt pod or someone in the middle.",
        hint=f"if the pod was really rebuilt, forget the old key with: {repin_command(name, display_path)}",
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load(path: Path) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    if path.is_file():
        keys.load(str(path))
    return keys


class PinOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Append an unknown host's key to ``path``; refuse one that changed meanwhile."""

    def __init__(self, path: Path, display_path: Optional[str] = None, *, quiet: bool = False):
        self.path = Path(path)
        self.display_path = display_path or str(path)
        self.quiet = quiet

    def missing_host_key(self, client, hostname: str, key: paramiko.PKey) -> None:
        with _locked(self.path):
            # Another invocation may have pinned it since this one loaded the file.
            entry = load(self.path).get(hostname)
            if entry is not None:
                pinned = entry.get(key.get_name()) or next(iter(entry.values()))
                if pinned == key:
                    return
                raise mismatch_error(hostname, key, pinned, self.display_path)
            text = self.path.read_text() if self.path.exists() else ""
            sep = "" if not text or text.endswith("\n") else "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "a") as fh:
                fh.write(f"{sep}{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        if not self.quiet:
            sys.stderr.write(f"podflow: pinned host key of {hostname} ({key.get_name()} {fingerprint(key)}) "
                             f"in {self.display_path}\n")
