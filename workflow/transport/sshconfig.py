"""Where the ``ssh`` provider's pod is: ``pod.host`` / ``pod.port`` / ``pod.user`` resolved.

``pod.host`` is ``host``, ``user@host``, ``user@host:port``, ``[v6addr]:port``, or an alias
from ``~/.ssh/config`` (its ``HostName``, ``Port``, ``User`` and ``IdentityFile`` are used;
other options such as ``ProxyJump`` are not). Precedence, highest first: what the host
string itself says, ``pod.*`` keys set in the config, the ``~/.ssh/config`` entry, the
defaults (port 22, the local user name).
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path
from typing import Optional, Tuple

from workflow.errors import ConfigError
from workflow.transport.endpoint import Endpoint

_SPEC = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s\[\]]+)(?::(?P<port>\d+))?$")


def parse_host_spec(spec: str) -> Tuple[Optional[str], str, Optional[int]]:
    """``user@host:port`` -> (user, host, port); missing parts are None."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ConfigError(f"pod.host: cannot parse '{spec}'",
                          hint="expected host, user@host, user@host:port or an alias from ~/.ssh/config")
    host = m.group("host")
    if host.startswith("["):
        host = host[1:-1]
    port = int(m.group("port")) if m.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"pod.host: port {port} out of range in '{spec}'")
    return m.group("user"), host, port


def _explicit(config, key: str, default) -> bool:
    """Whether ``key`` was set by the user rather than left at its built-in default."""
    source = (config.sources or {}).get(key)
    if source is not None:
        return source != "default"
    return config.get(key, default) != default


def _ssh_config_entry(alias: str) -> dict:
    path = Path(os.path.expanduser("~/.ssh/config"))
    if not path.is_file():
        return {}
    import paramiko

    try:
        found = paramiko.SSHConfig.from_path(str(path)).lookup(alias)
    except Exception as exc:  # a broken user file: say so, do not crash
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    return found


def resolve_ssh_endpoint(config) -> Endpoint:
    """The endpoint of ``provider: ssh`` from ``pod.host``/``port``/``user`` and ``~/.ssh/config``."""
    spec = config.get("pod.host", None)
    if not spec:
        raise ConfigError("pod.host is not set (provider 'ssh' needs it)",
                          hint="set pod.host: user@host:port in configs/workflow.yaml, or OPS_DEFAULT_HOST")
    user, host, port = parse_host_spec(str(spec))
    entry = _ssh_config_entry(host)
    hostname = entry.get("hostname", host) if entry else host
    if port is None:
        if _explicit(config, "pod.port", 22):
            port = int(config.get("pod.port"))
        elif entry.get("port"):
            port = int(entry["port"])
        else:
            port = int(config.get("pod.port", 22) or 22)
    if user is None:
        user = config.get("pod.user", None) or entry.get("user") or getpass.getuser()
    identity = None
    if not _explicit(config, "pod.identity_file", "~/.ssh/id_ed25519") and entry.get("identityfile"):
        identity = os.path.expanduser(entry["identityfile"][0])
    return Endpoint(host=hostname, port=port, user=user, identity_file=identity)
