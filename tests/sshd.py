"""A real OpenSSH server on loopback for tests and benches: the "pod" of the ssh provider.

Usage in a test (the fixtures are re-exported by ``tests/conftest.py``)::

    def test_something(ssh_pod, project):
        ssh_pod.write_config(project)            # configs/workflow.yaml, provider: ssh
        out = subprocess.run([WF, "check-connection"], cwd=project, ...)
        assert (ssh_pod.remote_dir / "outputs").exists()

What you get
------------
``ssh_pod`` (function scope) is a started :class:`SshPod`:

- ``accepted_logins()``: how many SSH logins this sshd has accepted so far (its log).
- ``host`` ("127.0.0.1"), ``port``, ``user`` (the test user, ``wftest``), ``password``
  (that user's password; export it as ``REMOTE_SSH_PASSWORD`` for password tests),
  ``key_path`` (client ed25519 private key, authorized for the user; ``pub_key`` is the
  public line), ``home`` (the pod user's home), ``dir`` (this sshd's own directory),
  ``remote_dir`` (a directory unique to this pod under ``home``: ``write_config`` puts
  ``remote.workdir``/``outputs_dir``/``data_dir`` in it, so tests sharing the user never
  collide; removed at teardown).
- ``start()``, ``stop()``, ``restart()`` (same port, same host key; open connections, the
  kept connection of ``wf`` commands among them, live on as with a real sshd),
  ``regenerate_host_key()`` (new host key; restarts if running, dropping connections), ``authorize_key(False)``
  (password-only pod), ``drop_connections()`` (kills this sshd's per-connection
  processes: a network fault mid-command), ``run_as_user(argv)`` (runs a command on
  this machine as the pod user with the pod's environment, for assertions; returns a
  ``CompletedProcess`` with text output), ``write_config(project_dir, **overrides)``.
- Every SSH session of this pod has ``WF_TEST_POD=<id>``, its own ``TMUX_TMPDIR`` and
  ``PODFLOW_GPU_LEASE_DIR`` (sshd ``SetEnv``), so tmux servers and fake GPUs' leases are
  private to the test (a pod is a machine of its own, tests run at once). At
  teardown every process of the test user whose environment carries this pod's
  ``WF_TEST_POD`` is killed by PID (tmux servers, runners, sleeps), then ``remote_dir``
  is removed. Nothing else of the user is touched (other engineers' test runs share it).

``write_config(project, **overrides)``: overrides are nested mappings merged into the
YAML (``pod={"connect_timeout_secs": 2}``) or double-underscore keys
(``pod__connect_timeout_secs=2``, ``remote__env={"A": "1"}``); a value of ``None``
removes the key. The config uses ``pod.known_hosts: .podflow/known_hosts`` (inside the
project) and ``pod.identity_file`` = ``key_path``.

Outside pytest (benches)::

    with sshd.pod_context() as pod: ...

Needs root (useradd, runuser), ``/usr/sbin/sshd`` and ``ssh-keygen``. Client keys are made
once per session; an sshd starts in ~10 ms.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import pytest

SSHD = "/usr/sbin/sshd"
TEST_USER = "wftest"
#: The test user's password. Fixed (several test runs share the user) and distinctive, so
#: a grep for it finds any leak.
TEST_PASSWORD = "wfPw-7Q3z-leakcanary"
_LOCK = "/tmp/.podflow-wftest-user.lock"


# ---------------------------------------------------------------- one-time setup


def ensure_user(name: str = TEST_USER, password: str = TEST_PASSWORD) -> pwd.struct_passwd:
    """Create the test user once (``useradd -m -s /bin/bash``) and set its password."""
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
            pw = pwd.getpwnam(name)
        marker = Path(pw.pw_dir) / ".wftest-password-set"
        if not marker.exists():
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True, capture_output=True)
            marker.touch()
            os.chown(marker, pw.pw_uid, pw.pw_gid)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return pw


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)


class ClientKeys:
    """The client key pair every pod of a session authorizes."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.key_path = self.base / "id_ed25519"
        if not self.key_path.exists():
            _keygen(self.key_path, "podflow-tests")
        self.pub_key = (self.base / "id_ed25519.pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deep_merge(base: Dict[str, Any], top: Dict[str, Any]) -> None:
    for k, v in top.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v


def _start_time(pid: int) -> Optional[str]:
    """A process's start time (``/proc/PID/stat`` field 22): with the pid, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


# ---------------------------------------------------------------- the pod


class SshPod:
    """One private sshd on 127.0.0.1 logging the test user in (see the module docstring)."""

    host = "127.0.0.1"

    def __init__(self, keys: ClientKeys, base: Path, user: str = TEST_USER, password: str = TEST_PASSWORD):
        pw = ensure_user(user, password)
        self.user, self.password = user, password
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home = Path(pw.pw_dir)
        self.key_path, self.pub_key = keys.key_path, keys.pub_key
        self.id = uuid.uuid4().hex[:12]
        # The sshd dir must be traversable by the user (sshd reads authorized keys as it).
        self.dir = Path(tempfile.mkdtemp(prefix=f"sshd-{self.id}-", dir=base))
        os.chmod(self.dir, 0o755)
        self.remote_dir = self.home / "wft" / self.id
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.path_dir: Optional[Path] = None
        self._orphans: list = []  # (pid, start time) of sessions of stopped listeners
        self.provider_env: Dict[str, str] = {}
        """What a cloud provider puts into its pods for the pod itself (fakes set it)."""
        self._make_dirs()
        self.regenerate_host_key(restart=False)
        self.authorize_key(True)
        self._write_sshd_config()

    # -- layout

    def _as_user(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)

    def _make_dirs(self) -> None:
        (self.home / "wft").mkdir(exist_ok=True)
        self._as_user(self.home / "wft")
        self.remote_dir.mkdir()
        self._as_user(self.remote_dir)
        self.tmux_dir = self.remote_dir / ".tmux"
        self.tmux_dir.mkdir(mode=0o700)
        self._as_user(self.tmux_dir)
        keys = self.dir / "keys"
        keys.mkdir(mode=0o755)

    @property
    def authorized_keys(self) -> Path:
        """sshd's AuthorizedKeysFile for the user (not ~/.ssh/authorized_keys)."""
        return self.dir / "keys" / self.user

    def authorize_key(self, yes: bool = True) -> None:
        """Authorize the session's client key (``False``: a password-only pod)."""
        path = self.authorized_keys
        path.write_text(self.pub_key + "\n" if yes else "")
        os.chmod(path, 0o600)
        self._as_user(path)

    @property
    def env(self) -> Dict[str, str]:
        """The variables every session of this pod gets (sshd ``SetEnv``)."""
        env = {"WF_TEST_POD": self.id, "TMUX_TMPDIR": str(self.tmux_dir),
               "PODFLOW_GPU_LEASE_DIR": str(self.remote_dir / ".gpu-leases"), **self.provider_env}
        if self.path_dir is not None:
            env["PATH"] = f"{self.path_dir}:/usr/local/bin:/usr/bin:/bin"
        return env

    def prepend_path(self, directory: Path) -> None:
        """Put ``directory`` first on the PATH of this pod's sessions (e.g. a fake
        ``nvidia-smi``); takes effect at the next start."""
        self.path_dir = Path(directory)
        self._write_sshd_config()

    def inject_env(self, env: Dict[str, str]) -> None:
        """Give every later session these variables, as a provider does in its containers."""
        self.provider_env = dict(env)
        self._write_sshd_config()
        if self.proc is not None:
            self.restart()

    def _write_sshd_config(self) -> None:
        setenv = " ".join(f"{k}={v}" for k, v in self.env.items())
        # AuthorizedKeysFile: sshd's own per-user file, plus the user's usual one so that
        # setup-keys (which installs into ~/.ssh/authorized_keys) can be tested for real.
        (self.dir / "sshd_config").write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.dir}/host_ed25519
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/keys/%u .ssh/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
PrintLastLog no
UseDNS no
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 50
MaxAuthTries 20
LogLevel VERBOSE
SetEnv {setenv}
"""
        )

    def regenerate_host_key(self, restart: bool = True) -> None:
        """A new host key (a pod rebuilt, or a man in the middle); restarts a running sshd
        and drops its open connections (a rebuilt pod keeps none, kept ones included)."""
        if restart:
            self.drop_connections()
        for name in ("host_ed25519", "host_ed25519.pub"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
        _keygen(self.dir / "host_ed25519", "podflow-test-host")
        if restart and self.proc is not None:
            self.restart()

    @property
    def host_pub_key(self) -> str:
        return (self.dir / "host_ed25519.pub").read_text().strip()

    # -- lifecycle

    def _sshd_prefix(self) -> list:
        """What runs sshd: nothing here; a subclass puts ``ip netns exec NS`` in front."""
        return []

    def start(self) -> "SshPod":
        if self.proc is not None:
            return self
        self.proc = subprocess.Popen(
            [*self._sshd_prefix(), SSHD, "-D", "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # `ip netns exec` execs sshd, so self.proc.pid is sshd's own pid either way
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                log = (self.dir / "sshd.log").read_text(errors="replace") if (self.dir / "sshd.log").exists() else ""
                self.proc = None
                raise RuntimeError(f"sshd at {self.host}:{self.port} failed to start: {err}{log}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((self.host, self.port)) == 0:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd at {self.host}:{self.port} did not listen within 10 s")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop the listener (open sessions live on, as with a real sshd)."""
        if self.proc is None:
            return
        # Its sessions outlive it (re-parented away from any later listener):
        # remember them, so drop_connections() still reaches them.
        self._orphans = sorted({(pid, _start_time(pid)) for pid in self._connection_pids()}, key=str)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _connection_pids(self) -> list:
        """This sshd's per-connection processes (``sshd: user [priv]`` and its child), and
        those of its earlier listeners (before a ``restart()``) still alive."""
        found = [pid for pid, started in self._orphans if started is not None and _start_time(pid) == started]
        if self.proc is None:
            return found
        parent, comm = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat.split(" (", 1)[1].rsplit(")", 1)
            parent[int(entry.name)] = int(rest.split()[1])
            comm[int(entry.name)] = name
        frontier = {self.proc.pid}
        while frontier:
            kids = {pid for pid, ppid in parent.items() if ppid in frontier and comm.get(pid) == "sshd"}
            found.extend(kids)
            frontier = kids
        return found

    def accepted_logins(self) -> int:
        """Logins this sshd accepted (``Accepted publickey|password for`` in its log)."""
        log = self.dir / "sshd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return sum(1 for line in text.splitlines()
                   if "Accepted publickey for " in line or "Accepted password for " in line)

    def drop_connections(self) -> None:
        """Kill this sshd's per-connection processes: every client sees its link die."""
        for pid in self._connection_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- helpers for assertions

    def run_as_user(self, argv: Sequence[str], *, input: Optional[str] = None, cwd: Optional[os.PathLike] = None,
                    check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``argv`` on this machine as the pod user (HOME, TMUX_TMPDIR as in a session)."""
        env = {"HOME": str(self.home), "USER": self.user, "LOGNAME": self.user, "SHELL": "/bin/bash",
               "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **self.env}
        return subprocess.run(
            ["runuser", "-u", self.user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
            input=input, capture_output=True, text=True, cwd=cwd or self.home, check=check, timeout=timeout,
        )

    def config_dict(self, **overrides: Any) -> Dict[str, Any]:
        doc: Dict[str, Any] = {
            "project": f"wft-{self.id}",
            "pod": {
                "provider": "ssh",
                "host": self.host,
                "port": self.port,
                "user": self.user,
                "identity_file": str(self.key_path),
                "known_hosts": ".podflow/known_hosts",
                "connect_timeout_secs": 10,
            },
            "remote": {
                "workdir": str(self.remote_dir / "repo"),
                "outputs_dir": str(self.remote_dir / "outputs"),
                "data_dir": str(self.remote_dir / "data"),
            },
        }
        for key, value in overrides.items():
            parts = key.split("__")
            nested: Any = value
            for part in reversed(parts[1:]):
                nested = {part: nested}
            _deep_merge(doc, {parts[0]: nested})
        return doc

    def write_config(self, project_dir: os.PathLike, **overrides: Any) -> Path:
        """Write ``<project_dir>/configs/workflow.yaml`` for ``provider: ssh`` at this pod."""
        import yaml

        path = Path(project_dir) / "configs" / "workflow.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.config_dict(**overrides), sort_keys=False))
        return path

    # -- teardown

    def user_pids(self) -> list:
        """PIDs of the test user's processes started through this pod (by ``WF_TEST_POD``)."""
        mark = f"WF_TEST_POD={self.id}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != self.uid:
                    continue
                env = (entry / "environ").read_bytes()
            except OSError:
                continue
            if mark in env.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def _forget_client_key(self) -> None:
        """Remove the session key from ``~/.ssh/authorized_keys`` if a test installed it
        there (``setup-keys`` with the default config), so the next pod is unchanged."""
        path = self.home / ".ssh" / "authorized_keys"
        if not path.exists():
            return
        key = " ".join(self.pub_key.split()[:2])
        with open(_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lines = path.read_text().splitlines(keepends=True)
            kept = [ln for ln in lines if " ".join(ln.split()[:2]) != key]
            if kept != lines:
                path.write_text("".join(kept))

    def cleanup(self) -> None:
        self.stop()
        for _ in range(3):
            pids = self.user_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self._forget_client_key()
        shutil.rmtree(self.remote_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"SshPod({self.user}@{self.host}:{self.port}, id={self.id})"


# ---------------------------------------------------------------- outside pytest


@contextlib.contextmanager
def pod_context(base: Optional[os.PathLike] = None) -> Iterator[SshPod]:
    """A started pod with its own keys, for scripts (``bench/roundtrip.py``)."""
    tmp = Path(tempfile.mkdtemp(prefix="podflow-sshd-", dir=base))
    os.chmod(tmp, 0o755)
    pod = SshPod(ClientKeys(tmp / "client"), tmp)
    try:
        yield pod.start()
    finally:
        pod.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def ssh_session_dir(tmp_path_factory):
    """A session directory traversable by the test user (pytest's basetemp is mode 700)."""
    base = Path(tempfile.mkdtemp(prefix="podflow-sshd-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_client_keys(ssh_session_dir) -> ClientKeys:
    """The client key pair, made once per session."""
    if os.geteuid() != 0 or not Path(SSHD).exists():
        pytest.skip("needs root and /usr/sbin/sshd")
    return ClientKeys(ssh_session_dir / "client")


@pytest.fixture
def ssh_pod(ssh_client_keys, ssh_session_dir) -> Iterator[SshPod]:
    """A started private sshd on loopback for the test user; see ``tests/sshd.py``."""
    pod = SshPod(ssh_client_keys, ssh_session_dir)
    try:
        yield pod.start()
    finally:
        pod.cleanup()
