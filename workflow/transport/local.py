"""The embedded ``local`` transport: the "pod" is this machine, no SSH.

Used by the demo and by anyone without a GPU box; the pod's files live under
``.podflow/local-pod/`` unless the config points elsewhere.
"""

from __future__ import annotations

import codecs
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from workflow.agent.fsutil import write_atomic
from workflow.agent.procs import ENGINE_SECRETS
from workflow.transport.base import RunResult, Transport


def _expand(path: str) -> str:
    return os.path.expanduser(path)


def down_record(outputs_dir: str) -> Path:
    """Where a local pool pod taken down (``wf pod-down``) is recorded: beside its outputs
    dir on this machine, not in it (a pod that is down answers nothing). While it exists
    the pod's transport refuses every command, as an unreachable host would."""
    p = Path(os.path.abspath(_expand(outputs_dir)))
    return p.with_name(p.name + ".down.json")


class LocalTransport(Transport):
    kind = "local"

    def __init__(self, down_record: Optional[Path] = None):
        self.down_record = down_record

    def _reachable(self) -> None:
        if self.down_record is not None and self.down_record.exists():
            from workflow.errors import ConnectionFailed

            raise ConnectionFailed("this local pod was taken down (wf pod-down): its processes were ended",
                                   hint="wf pod-up --pod NAME brings it back")

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        input: Optional[bytes] = None,
        timeout: Optional[float] = None,
        on_stdout: Optional[Callable[[str], None]] = None,
    ) -> RunResult:
        self._reachable()
        # The engine's own credentials stay with the engine: the "pod" here is this machine,
        # but what runs on it (the agent, its watchdog, jobs) gets them no more than a
        # remote pod would.
        full_env = {k: v for k, v in os.environ.items() if k not in ENGINE_SECRETS}
        full_env.update(env or {})
        if on_stdout is not None:
            return self._run_streaming(argv, full_env, cwd, input, timeout, on_stdout)
        try:
            proc = subprocess.run(
                list(argv),
                env=full_env,
                cwd=_expand(cwd) if cwd else None,
                input=input if input is not None else b"",
                capture_output=True,
                timeout=timeout,
            )
        except FileNotFoundError as exc:
            return RunResult(127, "", f"{argv[0]}: {exc.strerror}\n")
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace")
            return RunResult(124, out, f"timed out after {timeout}s\n")
        return RunResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    @staticmethod
    def _run_streaming(argv, env, cwd, input, timeout, on_stdout) -> RunResult:
        try:
            proc = subprocess.Popen(list(argv), env=env, cwd=_expand(cwd) if cwd else None,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            return RunResult(127, "", f"{argv[0]}: {exc.strerror}\n")
        err: list = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        proc.stdin.write(input or b"")
        proc.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = proc.stdout.fileno()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                proc.kill()
                proc.wait()
                return RunResult(124, "".join(out), f"timed out after {timeout}s\n")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text = decoder.decode(chunk)
            out.append(text)
            on_stdout(text)
        code = proc.wait()
        reader.join()
        return RunResult(code, "".join(out), (err[0] if err else b"").decode(errors="replace"))

    def put(self, local: Path, remote: str) -> None:
        self._reachable()
        dest = Path(_expand(remote))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, dest)

    def get(self, remote: str, local: Path) -> None:
        self._reachable()
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(_expand(remote), local)

    def read_file(self, remote: str) -> bytes:
        self._reachable()
        return Path(_expand(remote)).read_bytes()

    def write_file_atomic(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        self._reachable()
        write_atomic(_expand(remote), data, mode=mode)
