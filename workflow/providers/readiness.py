"""Staged readiness: a pod counts as usable only when an SSH command really runs on it.

Stages, each polled with bounded exponential backoff (no fixed sleeps), all within
one deadline (``pod.ready_timeout_secs``):

1. ``api``     the provider says running and an SSH endpoint is known
2. ``tcp``     the SSH port accepts connections (endpoints tried best first: Vast's
               direct port before its proxy)
3. ``auth``    SSH public-key (or password) authentication succeeds
4. ``command`` a command runs; ``nvidia-smi -L`` lists GPUs where CUDA is required
               (see :func:`gpu_verdict`)

A stage that has to wait says once what it waits for, then the last answer it got
every ``STILL_SECS``; the SSH library's own log stays off the terminal
(``transport/sshlog.py``). The probe uses paramiko directly (one connection for stages
3-4, TCP_NODELAY, the fast curve25519 key exchange first); it accepts the host key it
sees, and the SSH transport pins that host on its own first connection.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from workflow.errors import CheckFailed, PodflowError, WaitTimeout
from workflow.providers import CUDA_IF_DRIVER, CUDA_OFF
from workflow.providers.base import PodGone, PodInfo, PodState, Provider
from workflow.transport.endpoint import Endpoint
from workflow.transport.sshlog import quiet_ssh_library

#: (first wait, cap) in seconds for each stage's polling
BACKOFF = {"api": (0.1, 2.0), "tcp": (0.05, 0.5), "auth": (0.05, 0.5), "command": (0.1, 1.0)}
#: re-read the pod from the API this often while waiting for the port (endpoints change)
REFRESH_SECS = 5.0
#: while a stage waits, its last answer is shown this often
STILL_SECS = 5.0
_KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
#: what a shell answers for a command it cannot find
_NOT_FOUND = 127


class PodNeverReady(PodflowError):
    """The pod did not become usable before the deadline (or the provider failed it)."""

    exit_code = WaitTimeout.exit_code

    def __init__(self, message: str, stage: str, *, hint: Optional[str] = None):
        super().__init__(message, hint=hint)
        self.stage = stage


class NoUsableGpu(CheckFailed):
    """A host you already have (ssh, local) has no working NVIDIA driver while
    ``checkout.require_cuda`` asks for CUDA: waiting would not change that (exit 1)."""


@dataclass
class Readiness:
    """The outcome: the pod as last seen, the endpoint that worked, seconds per stage."""

    pod: PodInfo
    endpoint: Endpoint
    stages: List[Tuple[str, float]] = field(default_factory=list)
    gpus: List[str] = field(default_factory=list)


class _Backoff:
    def __init__(self, stage: str, deadline: float):
        self.wait, self.cap = BACKOFF[stage]
        self.deadline = deadline

    def sleep(self) -> bool:
        """Sleep the next step; False when the deadline has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(self.wait, left))
        self.wait = min(self.wait * 1.6, self.cap)
        return True


class _Waiting:
    """Says once what a stage waits for, then its last answer every ``STILL_SECS``."""

    def __init__(self, say: Callable[[str], None], what: str):
        self.say, self.what = say, what
        self.since: Optional[float] = None
        self.shown = 0.0

    def answer(self, last: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = self.shown = now
            self.say(f"waiting for {self.what} ({last})")
        elif now - self.shown >= STILL_SECS:
            self.shown = now
            self.say(f"still not there after {now - self.since:.0f}s; last answer: {last}")


def describe_ssh_error(exc: BaseException) -> str:
    """Words for why a login attempt failed, for a person watching a pod boot."""
    import paramiko

    text = str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return f"login refused ({text or 'authentication failed'}; is the key authorized yet?)"
    if isinstance(exc, paramiko.SSHException) and "protocol banner" in text:
        return "the port is open but no SSH server answers yet"
    if isinstance(exc, EOFError):
        return "the connection was closed before the login"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def gpu_verdict(cuda: str, booting: bool, code: int, out: str, where: str) -> Optional[str]:
    """What an answer of ``nvidia-smi -L`` (exit ``code``, output ``out``) means.

    None: usable (GPUs listed, or no NVIDIA driver where CUDA is only wanted with one).
    A string: not yet, and why (a rented pod still ``booting`` gets its driver late).
    Raises ``NoUsableGpu`` on a host you already have that cannot get better by waiting.
    """
    gpus = _gpu_lines(out)
    if code == 0 and gpus:
        return None
    missing = code == _NOT_FOUND
    if missing and cuda == CUDA_IF_DRIVER:
        return None
    tail = out.strip()[-200:]
    why = ("nvidia-smi not found" if missing
           else f"nvidia-smi -L: exit {code}, {len(gpus)} GPUs{': ' + tail if tail else ''}")
    if booting:
        return why
    if missing:
        raise NoUsableGpu(
            f"{where} has no NVIDIA driver (nvidia-smi not found), but checkout.require_cuda is true",
            hint="for a CPU-only host set checkout.require_cuda: auto (the default: CUDA only where the host "
                 "has nvidia-smi) or false in the config (or WF__CHECKOUT__REQUIRE_CUDA=auto)")
    raise NoUsableGpu(
        f"{where} lists no usable GPU ({why})",
        hint="fix the host's NVIDIA driver, or set checkout.require_cuda: false to use it without CUDA")


def local_gpus(cuda: str) -> List[str]:
    """This machine's GPUs for the ``local`` provider, judged as a host you already have
    (``gpu_verdict``: no waiting, ``NoUsableGpu`` when CUDA is required and absent)."""
    if cuda == CUDA_OFF:
        return []
    import subprocess

    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        code, out = res.returncode, res.stdout + res.stderr
    except FileNotFoundError:
        code, out = _NOT_FOUND, ""
    except subprocess.TimeoutExpired:
        code, out = 124, "nvidia-smi -L did not answer within 60s"
    gpu_verdict(cuda, False, code, out, "this machine (provider local)")
    return _gpu_lines(out)


def load_key(path: Optional[str]):
    """The private key at ``path`` (any type paramiko reads), or None when missing."""
    import os

    import paramiko

    if not path:
        return None
    p = os.path.expanduser(path)
    if not os.path.exists(p):
        return None
    try:
        return paramiko.PKey.from_path(p)
    except AttributeError:  # paramiko < 3.2
        for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            try:
                return cls.from_private_key_file(p)
            except paramiko.SSHException:
                continue
        raise


def tcp_open(endpoint: Endpoint, timeout: float = 1.0) -> Optional[str]:
    """None when the port accepts a connection, else why not."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


class SshProbe:
    """One paramiko connection to try auth and run the readiness command."""

    def __init__(self, endpoint: Endpoint, *, key=None, password: Optional[str] = None,
                 connect_timeout: float = 10.0):
        self.endpoint, self.key, self.password = endpoint, key, password
        self.connect_timeout = connect_timeout
        self.transport = None

    def connect(self) -> None:
        import paramiko

        sock = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = paramiko.Transport(sock)
        try:
            opts = t.get_security_options()
            fast = [k for k in _KEX if k in opts.kex]
            opts.kex = tuple(fast + [k for k in opts.kex if k not in fast])
            t.start_client(timeout=self.connect_timeout)
            user = self.endpoint.user or "root"
            if self.key is not None:
                t.auth_publickey(user, self.key)
            elif self.password is not None:
                t.auth_password(user, self.password)
            else:
                raise paramiko.AuthenticationException("no key file and no REMOTE_SSH_PASSWORD")
            if not t.is_authenticated():
                raise paramiko.AuthenticationException("not authenticated")
        except BaseException:
            t.close()
            raise
        self.transport = t

    def run(self, command: str, timeout: float = 30.0) -> Tuple[int, str]:
        chan = self.transport.open_session(timeout=timeout)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            out = b""
            while True:
                chunk = chan.recv(65536)
                if not chunk:
                    break
                out += chunk
            return chan.recv_exit_status(), out.decode(errors="replace")
        finally:
            chan.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _gpu_lines(text: str) -> List[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("GPU ")]


def wait_usable(
    provider: Provider,
    pod_id: str,
    *,
    timeout: float,
    cuda: str = CUDA_OFF,
    booting: bool = True,
    identity_file: Optional[str] = None,
    password: Optional[str] = None,
    connect_timeout: float = 10.0,
    progress: Optional[Callable[[str], None]] = None,
    first: Optional[PodInfo] = None,
) -> Readiness:
    """Wait through the four stages; raise ``PodNeverReady`` at the deadline.

    ``cuda`` is a ``providers.cuda_policy``; ``booting`` says the pod may still be
    starting (a rented pod), so a missing GPU driver is waited for rather than reported
    at once (``gpu_verdict``)."""
    quiet_ssh_library()
    say = progress or (lambda msg: None)
    t0 = time.monotonic()
    deadline = t0 + timeout
    stages: List[Tuple[str, float]] = []
    mark = t0

    def done(stage: str, msg: str) -> None:
        nonlocal mark
        now = time.monotonic()
        stages.append((stage, round(now - mark, 3)))
        mark = now
        say(msg)

    # 1. api: running + endpoint known
    pod = first
    back = _Backoff("api", deadline)
    waiting = _Waiting(say, f"{provider.name} to report pod {pod_id} running with an SSH endpoint")
    while True:
        if pod is None or pod.state != PodState.RUNNING or not pod.endpoints:
            try:
                pod = provider.get(pod_id)
            except PodGone:
                raise PodNeverReady(f"{provider.name}: pod {pod_id} disappeared while starting", "api") from None
        if pod.state.is_terminal():
            raise PodNeverReady(f"{provider.name}: pod {pod_id} is {pod.raw_state or pod.state.value}", "api")
        if pod.state == PodState.RUNNING and pod.endpoints:
            break
        waiting.answer(f"now {pod.raw_state or pod.state.value}")
        if not back.sleep():
            raise PodNeverReady(f"{provider.name}: pod {pod_id} still {pod.raw_state or pod.state.value} "
                                f"after {timeout:.0f}s (no SSH endpoint yet)", "api")
        pod = None
    done("api", f"{provider.name} says {pod.raw_state or 'running'}; ssh at {', '.join(map(str, pod.endpoints))}")

    # 2. tcp: a port that accepts connections, best endpoint first
    back = _Backoff("tcp", deadline)
    waiting = _Waiting(say, "the SSH port to open")
    refreshed = time.monotonic()
    endpoint, why = None, ""
    while endpoint is None:
        for cand in pod.endpoints:
            why = tcp_open(cand, timeout=min(1.0, max(0.05, deadline - time.monotonic())))
            if why is None:
                endpoint = cand
                break
        if endpoint is not None:
            break
        waiting.answer(why)
        if not back.sleep():
            raise PodNeverReady(f"{provider.name}: ssh port of pod {pod_id} never opened ({why})", "tcp")
        if time.monotonic() - refreshed > REFRESH_SECS:
            refreshed = time.monotonic()
            try:
                pod = provider.get(pod_id)
            except PodGone:
                raise PodNeverReady(f"{provider.name}: pod {pod_id} disappeared while starting", "tcp") from None
            if pod.state.is_terminal():
                raise PodNeverReady(f"{provider.name}: pod {pod_id} is {pod.raw_state}", "tcp")
    done("tcp", f"port open at {endpoint}")

    # 3. auth, 4. command: one connection, retried from the start on failure
    key_path = endpoint.identity_file or identity_file  # e.g. an ~/.ssh/config alias's IdentityFile
    key = load_key(key_path)
    if key is None and password is None:
        raise PodNeverReady(f"no SSH key at {key_path} and REMOTE_SSH_PASSWORD is not set", "auth",
                            hint="run 'wf setup-keys' to create the key")
    command = "nvidia-smi -L" if cuda != CUDA_OFF else "echo podflow-ready"
    where = f"{provider.name} host {endpoint}"
    back = _Backoff("auth", deadline)
    waiting = _Waiting(say, f"an SSH login at {endpoint} to work")
    authed = False
    last = ""
    gpus: List[str] = []
    while True:
        probe = SshProbe(endpoint, key=key, password=password,
                         connect_timeout=min(connect_timeout, max(0.5, deadline - time.monotonic())))
        ready = False
        try:
            probe.connect()
            if not authed:
                authed = True
                done("auth", f"ssh login works as {endpoint.user or 'root'}")
                back = _Backoff("command", deadline)
                waiting = _Waiting(say, "a command to run" if cuda == CUDA_OFF else "nvidia-smi -L to list the GPUs")
            code, out = probe.run(command, timeout=max(1.0, min(60.0, deadline - time.monotonic())))
            if cuda != CUDA_OFF:
                verdict = gpu_verdict(cuda, booting, code, out, where)
                ready, last, gpus = verdict is None, verdict or "", _gpu_lines(out)
            else:
                ready, last = code == 0 and "podflow-ready" in out, f"exit {code}: {out.strip()[-200:]}"
        except NoUsableGpu:
            raise
        except Exception as exc:  # paramiko/socket errors: sshd not answering yet, key not authorized yet
            last = describe_ssh_error(exc)
        finally:
            probe.close()
        if ready:
            break
        waiting.answer(last)
        if not back.sleep():
            stage = "command" if authed else "auth"
            raise PodNeverReady(f"{provider.name}: pod {pod_id} "
                                f"{'never ran a command' if authed else 'never accepted ssh login'} "
                                f"within {timeout:.0f}s ({last})", stage)
    done("command", "command runs" + (f"; {len(gpus)} GPU{'s' if len(gpus) > 1 else ''}" if gpus
                                      else "; no NVIDIA driver: CPU only" if cuda == CUDA_IF_DRIVER else ""))
    return Readiness(pod=pod, endpoint=endpoint, stages=stages, gpus=gpus)
