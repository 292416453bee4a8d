"""``setup-keys`` (seed 000): an ed25519 key for the pod, installed over a password login.

The key is made without a passphrase at ``pod.identity_file`` (mode 600, ``.pub`` beside
it). With ``REMOTE_SSH_PASSWORD`` set, the public key goes through stdin (never a command
line) into the pod user's ``~/.ssh/authorized_keys``, once; then a key-only login is
tried. Without it, the public key is printed between markers for a provider dashboard.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Tuple

from workflow.config.model import Config
from workflow.errors import CheckFailed, ConfigError, RemoteCommandFailed

if TYPE_CHECKING:
    from workflow.transport.base import Transport

NO_PASSWORD_MODE = "NO_PASSWORD_MODE"
PUBLIC_KEY_START, PUBLIC_KEY_END = "PUBLIC_KEY_START", "PUBLIC_KEY_END"
_ADDED, _PRESENT = "__PODFLOW_KEY_ADDED__", "__PODFLOW_KEY_PRESENT__"

# stdin: one public key line. Idempotent by key material (type + base64), not comment.
_INSTALL = r"""
umask 077
IFS= read -r key || [ -n "$key" ] || exit 65
set -f; set -- $key; b="$2"
[ -n "$b" ] || exit 65
mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh" || exit 66
f="$HOME/.ssh/authorized_keys"
touch "$f" && chmod 600 "$f" || exit 66
if grep -q -F -- " $b" "$f"; then echo __PODFLOW_KEY_PRESENT__; exit 0; fi
if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then printf '\n' >> "$f"; fi
printf '%s\n' "$key" >> "$f" && echo __PODFLOW_KEY_ADDED__
"""


def public_key_line(path: Path) -> str:
    """``ssh-ed25519 AAAA... comment`` of the key at ``path`` (from ``.pub`` or the key)."""
    pub = Path(str(path) + ".pub")
    if pub.is_file():
        text = pub.read_text().strip()
        if text:
            return text
    import paramiko

    try:
        key = paramiko.PKey.from_path(str(path))
    except paramiko.PasswordRequiredException:
        raise ConfigError(f"{path} is protected by a passphrase; podflow needs a key without one",
                          hint="point pod.identity_file at another path and run 'wf setup-keys'") from None
    except Exception as exc:
        raise ConfigError(f"{path}: not a usable SSH private key ({exc})") from None
    return f"{key.get_name()} {key.get_base64()}"


_KEY_LOCK = threading.Lock()


def ensure_key(path: Path, comment: str) -> Tuple[str, bool]:
    """The key's public line, creating an ed25519 key without passphrase if missing.

    Pods of a pool set up in parallel share the key: one thread makes it, the others use it."""
    with _KEY_LOCK:
        return _ensure_key(Path(path), comment)


def _ensure_key(path: Path, comment: str) -> Tuple[str, bool]:
    if path.exists():
        return public_key_line(path), False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode()} {comment}"
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    os.chmod(path, 0o600)
    pub = Path(str(path) + ".pub")
    pub.write_text(line + "\n")
    os.chmod(pub, 0o644)
    return line, True


def install_key(transport, public_line: str) -> bool:
    """Add the key to the pod user's authorized_keys; False when it was already there."""
    res = transport.run(["sh", "-c", _INSTALL], input=(public_line.strip() + "\n").encode(), timeout=60)
    if _ADDED in res.stdout:
        return True
    if _PRESENT in res.stdout:
        return False
    raise RemoteCommandFailed("install public key in ~/.ssh/authorized_keys", res.exit_code,
                              res.stdout + res.stderr)


def _identity_path(config) -> Path:
    """The key the SSH transport would use, without connecting (an ssh alias's IdentityFile)."""
    if config.pod.provider == "ssh" and config.get("pod.host", None):
        from workflow.transport.sshconfig import resolve_ssh_endpoint

        found = resolve_ssh_endpoint(config).identity_file
        if found:
            return config.local_path(found)
    return config.local_path(config.pod.identity_file)


def setup_keys(config, connect: Callable[[], "Transport"], out: Callable[[str], None] = print) -> None:
    """Create the key and, with ``REMOTE_SSH_PASSWORD`` set, install it over the transport
    ``connect()`` gives (the caller's, so this layer resolves no endpoint itself)."""
    provider = config.pod.provider
    if provider == "local":
        path = config.local_path(config.pod.identity_file)
        _, created = ensure_key(path, f"podflow@{config.project}")
        out(f"{'created' if created else 'using'} key {path}")
        out("provider 'local': the pod is this machine, no SSH; nothing to install.")
        return
    password = Config.secret("REMOTE_SSH_PASSWORD")
    transport = connect() if password is not None else None
    path = transport.identity_file if transport is not None else _identity_path(config)
    if path is None:
        raise ConfigError("pod.identity_file is not set")
    line, created = ensure_key(path, f"podflow@{config.project}")
    out(f"{'created' if created else 'using'} key {path}")
    if transport is None:  # no connection needed: the user installs the key elsewhere
        out(NO_PASSWORD_MODE)
        out(PUBLIC_KEY_START)
        out(line)
        out(PUBLIC_KEY_END)
        out("Add this public key to the pod (the provider's SSH keys page, or the pod user's "
            "~/.ssh/authorized_keys), then run 'wf check-connection'.")
        return
    added = install_key(transport, line)
    out(f"{'installed' if added else 'already installed'}: public key in {transport.describe()} ~/.ssh/authorized_keys")
    from workflow.transport.ssh import SshTransport

    probe = SshTransport(transport.endpoint, known_hosts=transport.known_hosts,
                         known_hosts_display=transport.known_hosts_display, identity_file=path,
                         connect_timeout=transport.connect_timeout, use_password=False)
    try:
        probe.connect()
        ok = probe.run(["true"], timeout=30).ok
    except Exception as exc:  # reported below as a failed check
        ok, why = False, str(exc)
    else:
        why = "the test command failed"
    finally:
        probe.close()
    if not ok:
        raise CheckFailed(f"the key is installed but a key-only login to {transport.describe()} failed: {why}",
                          hint="the pod's sshd may not read ~/.ssh/authorized_keys; keep using REMOTE_SSH_PASSWORD")
    out("key login verified: REMOTE_SSH_PASSWORD is no longer needed")
