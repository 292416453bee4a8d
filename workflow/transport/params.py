"""What an SSH connection to a pod is made of, as plain non-secret data (no SSH stack).

``SshParams`` is built once from the config and an endpoint; the direct transport
(``ssh.SshTransport``) and the kept connection (``kept/``) both use it, and its
``key`` names a kept connection's socket, so a changed endpoint, key file or pin file
is a different connection. The password is never part of it: it stays in the
environment (``REMOTE_SSH_PASSWORD``) and is read at connect time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from workflow.config.model import Config
from workflow.errors import ConfigError
from workflow.transport.endpoint import Endpoint

PASSWORD_ENV = "REMOTE_SSH_PASSWORD"
#: An SSH keepalive goes out after this many idle seconds, so a dead link always has
#: unacknowledged data in flight (which is what TCP_USER_TIMEOUT measures).
KEEPALIVE_SECS = 5
_ASKPASS = '#!/bin/sh\n# podflow: hands ssh the password from the environment; holds no secret.\nprintf \'%s\\n\' "$REMOTE_SSH_PASSWORD"\n'


def dead_link_secs(connect_timeout: float) -> float:
    """How long a link may leave sent data unacknowledged before it counts as dead (the
    connection is dropped: ``ConnectionFailed``, exit 4): ``pod.connect_timeout_secs``,
    kept within 5..30 s. Without it a cut link (cable, veth, NAT state lost) leaves a
    blocking call (``task-wait``) hanging for TCP's ~15 minutes of retransmissions."""
    return max(5.0, min(float(connect_timeout), 30.0))


@dataclass(frozen=True)
class SshParams:
    """Everything but the password that reaching one pod over SSH takes."""

    host: str
    port: int
    user: str
    known_hosts: str
    """The pin file (absolute path)."""
    known_hosts_display: str
    """The pin file as the config names it, for messages."""
    identity_file: Optional[str]
    connect_timeout: float
    askpass_dir: str
    """Where the ``SSH_ASKPASS`` script for rsync lives (``.podflow/``)."""

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.user, self.identity_file)

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def key(self) -> str:
        """A short stable name for this connection (sha256 of every field)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def to_doc(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: Dict[str, Any]) -> "SshParams":
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__})

    def key_file(self) -> Optional[str]:
        """The identity file when it exists (else password only)."""
        if self.identity_file and Path(self.identity_file).is_file():
            return self.identity_file
        return None


def ssh_params(config, endpoint: Endpoint) -> SshParams:
    """``endpoint`` with ``config``'s user, key, pins and time-out filled in."""
    user = endpoint.user or config.get("pod.user", None) or "root"
    identity = endpoint.identity_file or config.get("pod.identity_file", None)
    known_display = str(config.get("pod.known_hosts", None) or ".podflow/known_hosts")
    try:
        timeout = float(config.get("pod.connect_timeout_secs", 20) or 20)
    except (TypeError, ValueError):
        raise ConfigError("pod.connect_timeout_secs must be a number") from None
    return SshParams(
        host=endpoint.host, port=int(endpoint.port), user=str(user),
        known_hosts=str(config.local_path(known_display)), known_hosts_display=known_display,
        identity_file=str(config.local_path(identity)) if identity else None,
        connect_timeout=timeout, askpass_dir=str(config.local_path(".podflow")),
    )


def has_password(use_password: bool = True) -> bool:
    return use_password and Config.secret(PASSWORD_ENV) is not None


def _askpass(directory: Path) -> Path:
    path = directory / "ssh-askpass.sh"
    if not path.is_file() or path.read_text() != _ASKPASS:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(_ASKPASS)
        os.chmod(tmp, 0o700)
        os.replace(tmp, path)
    return path


def ssh_argv(p: SshParams, *, password: bool) -> List[str]:
    """``ssh`` options reaching the pod like the transports do (same key, port, pins)."""
    argv = [
        "ssh", "-F", "/dev/null", "-p", str(p.port),
        "-o", f"UserKnownHostsFile={p.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"ConnectTimeout={max(1, int(p.connect_timeout))}",
        "-o", f"ServerAliveInterval={KEEPALIVE_SECS}",
        "-o", f"ServerAliveCountMax={max(1, int(dead_link_secs(p.connect_timeout) // KEEPALIVE_SECS))}",
        "-o", "Compression=no",
        "-o", "IdentitiesOnly=yes",
        "-l", p.user,
    ]
    key = p.key_file()
    if key:
        argv += ["-i", key]
    if not password:
        argv += ["-o", "BatchMode=yes"]
    else:
        argv += ["-o", "PreferredAuthentications=publickey,password", "-o", "NumberOfPasswordPrompts=1"]
        # The password reaches ssh through SSH_ASKPASS, from the environment rsync inherits.
        argv = ["env", f"SSH_ASKPASS={_askpass(Path(p.askpass_dir))}", "SSH_ASKPASS_REQUIRE=force",
                f"DISPLAY={os.environ.get('DISPLAY') or 'podflow:0'}"] + argv
    return argv


def rsync_target(p: SshParams, remote: str) -> str:
    from workflow.transport.shell import sftp_path

    host = f"[{p.host}]" if ":" in p.host else p.host
    return f"{p.user}@{host}:{sftp_path(remote)}"
