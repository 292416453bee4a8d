"""Commands on a pool (SPEC §8): ``--pod``, one output per pod, every pod's failure by name.

Every task that reaches a pod calls ``on_pods``: it runs the task's work on the selected
pods through ``workflow.pool.fan_out`` (in parallel when there are several), then prints
each pod's result in pod order and raises the failures (``pool.raise_failures``).

With one pod the output is the task's own, unchanged. With several, every line a pod's
work or rendering prints starts with the pod's name (``p1: ...``), progress lines too,
and ``--json`` prints ``{"pods": [{"name": "p0", ...the pod's document}, ...]}``, a
failed pod's entry carrying ``error`` and ``exit_code``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from workflow import pool, runtime
from workflow.cli.boundary import print_json

POD_HELP = ("the pod to act on: its name (p0, p1, ...) or index; "
            "default: every pod of the pool, in parallel")


class _PodLines(io.TextIOBase):
    """A stand-in for stdout/stderr while several pods work: each whole line written from
    a pod's context gets the pod's name in front; other lines pass through."""

    def __init__(self, stream):
        self._stream = stream
        self._partial: Dict[int, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        pod = runtime.pod_here()
        if pod is None:
            with self._lock:
                self._stream.write(text)
            return len(text)
        key = threading.get_ident()
        with self._lock:
            lines = (self._partial.pop(key, "") + text).split("\n")
            if lines[-1]:
                self._partial[key] = lines[-1]
            for line in lines[:-1]:
                self._stream.write(f"{pod.name}: {line}\n")
            self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        for rest in self._partial.values():
            self._stream.write(rest + "\n")
        self._partial.clear()
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


@contextlib.contextmanager
def _named_lines(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    out, err = _PodLines(sys.stdout), _PodLines(sys.stderr)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        out.finish()
        err.finish()


def error_entry(r: pool.PodResult) -> Dict[str, Any]:
    exc = r.error
    return {"name": r.pod.name, "error": {"type": type(exc).__name__, "message": getattr(exc, "message", str(exc)),
                                          "hint": getattr(exc, "hint", None)},
            "exit_code": int(getattr(exc, "exit_code", 1))}


def on_pods(which: Optional[str], work: Callable[[], Any], *, render: Optional[Callable[[Any], None]] = None,
            to_doc: Optional[Callable[[Any], Any]] = None, json: bool = False, raise_errors: bool = True,
            pods: Optional[Sequence[pool.Pod]] = None,
            earlier: Sequence[pool.PodResult] = ()) -> List[pool.PodResult]:
    """Run ``work()`` on the pods ``--pod`` selects (inside each pod's runtime context), then
    print: ``render(value)`` per pod, or with ``json`` one document (``to_doc(value)``).
    Raises the pods' failures unless ``raise_errors`` is False.

    ``pods``: these pods instead of the selection (e.g. those that passed a first phase),
    ``earlier``: that phase's failures, reported (in pod order) with this one's."""
    selected = tuple(pods) if pods is not None else pool.select(runtime.config(), which)
    many = len(selected) + len(earlier) > 1
    with _named_lines(many):
        results = sorted(list(earlier) + pool.fan_out(selected, lambda pod: work()), key=lambda r: r.pod.index)
        if json and to_doc is not None:
            if not many:
                if results and results[0].ok:
                    print_json(to_doc(results[0].value))
            else:
                print_json({"pods": [dict(to_doc(r.value), name=r.pod.name) if r.ok else error_entry(r)
                                     for r in results]})
        elif render is not None:
            for r in results:
                if r.ok:
                    with runtime.on_pod(r.pod):
                        render(r.value)
    if raise_errors:
        pool.raise_failures(results)
    return results


def raise_returned(results: List[pool.PodResult], kind: type) -> None:
    """Raise the ``kind`` errors that pods' work returned (to print first, raise after)."""
    pool.raise_failures([pool.PodResult(r.pod, error=r.value if isinstance(r.value, kind) else None)
                         for r in results])
