"""The engine's side of the podagent: package it, install it once, call it in one exec.

The agent is zipped from ``workflow/agent/`` deterministically; its content hash names
the file on the pod, so a changed agent is installed beside the old one and never
half-replaced. A call costs exactly one remote exec once the agent is there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import marshal
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from workflow.agent import protocol, serve
from workflow.errors import (
    CheckFailed,
    CorruptRemoteFile,
    InputError,
    PodflowError,
    RemoteCommandFailed,
    RemoteProtocolError,
    TransitionRefused,
    WaitTimeout,
)
from workflow.transport.base import NotServed, RunResult, Transport

AGENT_DIR = Path(__file__).parent / "agent"
# $0 = python, $1 = agent path (a leading ~/ is the pod user's home), then op and args.
# python -S: the agent needs only the standard library, and the .pth files of a pod's
# site-packages (an editable install's finder, a CA bundle) cost every op's start ~0.05 s.
_LAUNCHER = (
    'p="$1"; shift; case "$p" in "~/"*) p="$HOME/${p#\\~/}";; esac; '
    'test -f "$p" || exit %d; exec "$0" -S "$p" "$@"' % protocol.EXIT_AGENT_MISSING
)


# task-wrap (every tracked task and sweep run) imports only the job modules: starts faster.
_MAIN = (b"import sys\n"
         b"if sys.argv[1:2] == ['task-wrap']:\n"
         b"    from podagent.job_wrapper import wrap_main\n"
         b"    sys.exit(wrap_main(sys.argv[2:]) or 0)\n"
         b"from podagent.__main__ import main\nsys.exit(main())\n")


@lru_cache(maxsize=None)
def _sources() -> Tuple[Tuple[str, bytes], ...]:
    """(name in the zipapp, source) of every module: ``__main__.py`` and ``podagent/*.py``."""
    return (("__main__.py", _MAIN),) + tuple(
        (f"podagent/{src.name}", src.read_bytes()) for src in sorted(AGENT_DIR.glob("*.py")))


def _bytecode(name: str, source: bytes) -> bytes:
    """An unchecked hash-based ``.pyc`` of ``source`` for this python (PEP 552): a pod
    whose python is this version imports it without compiling (zipimport never writes
    one); any other version finds another magic number and compiles the source."""
    code = compile(source, name, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little") + importlib.util.source_hash(source)
            + marshal.dumps(code))


@lru_cache(maxsize=None)
def agent_bundle() -> bytes:
    """The zipapp bytes: ``podagent/*.py`` plus a top-level ``__main__.py``, each with its
    ``.pyc`` for this python beside it (a python started per task, op or agent otherwise
    spends ~0.1 s compiling the agent from the zip)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        for name, source in _sources():
            add(name, source)
            add(name + "c", _bytecode(name, source))
    return buf.getvalue()


@lru_cache(maxsize=None)
def agent_hash() -> str:
    """Names the bundle: its sources and this python's bytecode version (the bytes of a
    ``.pyc`` may differ between two builds; what they run may not)."""
    digest = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    for name, source in _sources():
        digest.update(b"%s\0%d\0" % (name.encode(), len(source)) + source)
    return digest.hexdigest()[:16]


def _error_from(doc: Dict[str, Any], op: str) -> PodflowError:
    kind, message = doc.get("kind"), doc.get("message", "podagent error")
    if kind == "refused":
        return TransitionRefused(doc.get("command") or op, doc.get("current", "?"), doc.get("allowed", []))
    if kind == "input":
        return InputError(message)
    if kind == "timeout":
        return WaitTimeout(message)
    if kind == "corrupt":
        return CorruptRemoteFile(message, hint="fix or remove the file by hand; podflow never overwrites it")
    if kind in ("protocol", "io"):
        return RemoteProtocolError(message)
    if kind == "check":
        return CheckFailed(message)
    if kind == "os":
        return RemoteCommandFailed(f"podagent {op}", 1, message,
                                   hint="free space on the pod ('wf remote-exec \"df -h\"') and run it again"
                                   if "disk is full" in message else None)
    if kind == "internal":
        return RemoteCommandFailed(f"podagent {op}", 1, doc.get("traceback", message))
    return RemoteCommandFailed(f"podagent {op}", 1, message)


class AgentClient:
    """Calls podagent ops on one transport; installs the agent on first use."""

    def __init__(self, transport: Transport, outputs_dir: str, *, python: str = "python3",
                 state_file: Optional[str] = None):
        self.transport = transport
        self.outputs_dir = outputs_dir.rstrip("/")
        self.python = python
        self.state_file = state_file
        self.calls = 0  # remote execs made, for tests and benches
        self._installed = False

    @property
    def agent_path(self) -> str:
        return f"{self.outputs_dir}/_control/agent/podagent-{agent_hash()}.pyz"

    def install(self) -> None:
        self.transport.write_file_atomic(self.agent_path, agent_bundle(), mode=0o644)
        self.calls += 1
        self._installed = True

    def argv(self, op: str, *args: str) -> list:
        """The argv that runs ``op`` (used to start long-running agent commands too)."""
        return ["sh", "-c", _LAUNCHER, self.python, self.agent_path, op, *args]

    def _served(self, op: str, payload: bytes, timeout: Optional[float]) -> Optional[RunResult]:
        """The op on a long-lived agent of the connection (``podagent serve``), or None when
        none took it (not installed yet, or the transport keeps none): nothing ran."""
        try:
            code, out, err = self.transport.agent_exec(self.argv(serve.COMMAND), op.encode() + b"\n" + payload,
                                                       timeout=timeout)
        except NotServed:
            return None
        self.calls += 1
        return RunResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def _one_shot(self, op: str, payload: bytes, timeout: Optional[float],
                  on_stdout: Optional[Callable[[str], None]]) -> RunResult:
        """The op in a python of its own on the pod; installs the agent when it is missing."""
        for attempt in (1, 2):
            self.calls += 1
            res = self.transport.run(self.argv(op), input=payload, timeout=timeout, on_stdout=on_stdout)
            if res.exit_code != protocol.EXIT_AGENT_MISSING or attempt == 2:
                return res
            self.install()
        raise AssertionError("unreachable")

    def call(self, op: str, timeout: Optional[float] = None, on_stdout: Optional[Callable[[str], None]] = None,
             **request: Any) -> Any:
        """Run one op and return its ``result``; agent errors become typed errors.
        ``on_stdout`` receives the op's output as it arrives (streaming ops such as
        ``task.logs`` with ``follow``); the answer's marker block comes last."""
        request.setdefault("outputs_dir", self.outputs_dir)
        if self.state_file:
            request.setdefault("state_file", self.state_file)
        payload = json.dumps(request).encode()
        # Streaming ops run one-shot, so that their output flows as it comes.
        served = on_stdout is None and op not in serve.ONE_SHOT_OPS
        res = self._served(op, payload, timeout) if served else None
        if res is None:
            res = self._one_shot(op, payload, timeout, on_stdout)
        try:
            doc = protocol.decode(res.stdout)
        except ValueError:
            tail = (res.stdout + res.stderr)[-2000:]
            if res.exit_code in (126, 127) or "python3" in res.stderr and "not found" in res.stderr:
                raise RemoteCommandFailed(f"podagent {op}", res.exit_code, tail,
                                          hint="the pod needs python3 >= 3.8 on PATH") from None
            raise RemoteProtocolError(f"podagent {op} gave no parsable answer (exit {res.exit_code}):\n{tail}") from None
        if not doc.get("ok"):
            raise _error_from(doc.get("error") or {}, op)
        return doc.get("result")
