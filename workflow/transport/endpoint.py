"""Where a pod's SSH server is: the non-secret facts a transport needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Endpoint:
    host: str
    """Hostname or IP (an ``~/.ssh/config`` alias is resolved before this is built)."""
    port: int = 22
    user: Optional[str] = None
    """SSH user; None means the provider's or ssh config's default."""
    identity_file: Optional[str] = None
    """Private key path; None means ``pod.identity_file``."""

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"
