"""A pod host in its own network namespace, so the link to it can be cut for real.

``netns_pod`` (function scope) is a started :class:`NetnsPod`: an ``SshPod``
(``tests/sshd.py``: the test user, its own sshd config with ``SetEnv
TMUX_TMPDIR=<dir>``, a per-test ``remote_dir`` holding outputs) whose sshd runs under
``ip netns exec`` and listens on ``10.77.N.2``, reached through a veth pair from this
namespace (``10.77.N.1``)::

    def test_cut(netns_pod, project):
        netns_pod.write_config(project, pod__connect_timeout_secs=3)
        ...
        netns_pod.cut()        # ip link set <veth> down: packets go nowhere
        ...
        netns_pod.restore()    # ip link set <veth> up

At teardown the namespace's processes (``ip netns pids``), then the test user's
processes carrying this pod's ``WF_TEST_POD`` mark, are killed by PID, and the
namespace is deleted (which removes the veth pair). Only 10.77.0.0/16 addresses in
namespaces made here are ever used.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from sshd import SSHD, TEST_USER, SshPod

_LOCK = "/tmp/.podflow-netns.lock"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_available() -> bool:
    if os.geteuid() != 0 or not Path(SSHD).exists():
        return False
    try:
        return _ip("netns", "list", check=False).returncode == 0
    except FileNotFoundError:
        return False


def _pick_subnet() -> int:
    """A 10.77.N.0/24 no interface on this machine uses yet (call under _LOCK)."""
    used = _ip("-o", "addr").stdout
    free = [n for n in range(1, 255) if f" 10.77.{n}." not in used]
    if not free:
        raise RuntimeError("no free 10.77.N.0/24 subnet")
    return random.choice(free)


class NetnsPod(SshPod):
    """An ``SshPod`` whose sshd lives in a network namespace of its own."""

    #: The namespace is ``<ns_prefix>-<random>``: a suite that makes its own pods names them.
    ns_prefix = "wfrel"

    def __init__(self, keys, base, user: str = TEST_USER):
        self.ns = None
        self._setup_namespace()
        try:
            super().__init__(keys, base, user=user)
        except BaseException:
            self._delete_namespace()
            raise

    # -- the namespace

    def _setup_namespace(self) -> None:
        tag = os.urandom(4).hex()
        with open(_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            n = _pick_subnet()
            self.ns, self.veth = f"{self.ns_prefix}-{tag}", f"wfv{tag}"
            self.host = f"10.77.{n}.2"
            self.gateway = f"10.77.{n}.1"
            _ip("netns", "add", self.ns)
            try:
                _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
                _ip("addr", "add", f"{self.gateway}/24", "dev", self.veth)
                _ip("link", "set", self.veth, "up")
                _ip("-n", self.ns, "addr", "add", f"{self.host}/24", "dev", "eth0")
                _ip("-n", self.ns, "link", "set", "lo", "up")
                _ip("-n", self.ns, "link", "set", "eth0", "up")
            except BaseException:
                self._delete_namespace()
                raise

    def _delete_namespace(self) -> None:
        if not self.ns:
            return
        for _ in range(3):
            pids = [int(p) for p in _ip("netns", "pids", self.ns, check=False).stdout.split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        _ip("netns", "delete", self.ns, check=False)
        _ip("link", "delete", self.veth, check=False)  # normally gone with the namespace
        self.ns = None

    def _write_sshd_config(self) -> None:
        super()._write_sshd_config()
        path = self.dir / "sshd_config"
        path.write_text(path.read_text().replace("ListenAddress 127.0.0.1", f"ListenAddress {self.host}"))

    # -- faults

    def cut(self) -> None:
        """The network fault: the host side of the veth goes down; nothing gets through."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")
        # the connected route comes back with the link; wait until the host answers
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.settimeout(0.3)
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.host}:{self.port} not reachable after restore()")

    # -- lifecycle

    def _sshd_prefix(self) -> list:
        return ["ip", "netns", "exec", self.ns]

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            self._delete_namespace()

    def __repr__(self) -> str:
        return f"NetnsPod({self.user}@{self.host}:{self.port} in {self.ns}, id={self.id})"


@pytest.fixture
def netns_pod(ssh_client_keys, ssh_session_dir) -> Iterator[NetnsPod]:
    """A started pod host in its own network namespace (see the module docstring)."""
    if not netns_available():
        pytest.skip("needs root, iproute2 with netns, /usr/sbin/sshd")
    pod = NetnsPod(ssh_client_keys, ssh_session_dir)
    try:
        yield pod.start()
    finally:
        pod.cleanup()
