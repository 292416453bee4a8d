"""The mirror (SPEC §8 resume): while ``sweep-wait`` runs, running runs' dirs come to
``<local.artifacts_dir>/<run_id>/`` incrementally, so a run whose pod dies can resume
elsewhere from its latest checkpoint.

One rsync for all the running runs (``-a --whole-file --modify-window=-1``: only changed
files; the engine's lock, fifo and wrapper log left out as ``fetch`` does; no
``--partial``: a cut transfer leaves no half file). It runs in a background thread, so the wait never waits
on it: a tick starts one only when the interval has passed and the previous one is done.
Its errors are logged (``on_error``) and it simply tries again at the next tick. It is
not a fetch: nothing is verified or marked fetched (``fetch-all`` does that at the end);
the files it brings are noted as brought in flux, so the next fetch removes those the
pod no longer has (an atomic write's temp file), as it does for its own.
"""

from __future__ import annotations

import os
import posixpath
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from workflow.agent.data import ENGINE_FILES


class Mirror:
    """Mirrors the running runs of one pod every ``interval`` seconds (0: never)."""

    def __init__(self, transport, artifacts: os.PathLike, interval: float, *,
                 on_error: Optional[Callable[[str], None]] = None):
        self.transport = transport
        self.artifacts = Path(artifacts)
        self.interval = max(0.0, float(interval or 0))
        self.on_error = on_error or (lambda text: None)
        self._thread: Optional[threading.Thread] = None
        self._last: Optional[float] = None
        self.done = 0
        """How many mirrors finished without an error."""
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def tick(self, status) -> bool:
        """Start a mirror of the running runs of ``status`` (a ``SweepStatus``) when one is
        due; never blocks. True: one started."""
        running = [r for r in status.runs if r.state == "running" and r.dir]
        if not self.enabled or not running or (self._thread is not None and self._thread.is_alive()):
            return False
        if self._last is not None and time.monotonic() - self._last < self.interval:
            return False
        self._last = time.monotonic()
        outputs = posixpath.dirname(running[0].dir.rstrip("/"))
        runs = sorted(r.id for r in running)
        self._thread = threading.Thread(target=self._once, args=(outputs, runs), name="podflow-mirror", daemon=True)
        self._thread.start()
        return True

    def close(self, wait_secs: float = 10.0) -> None:
        """Let a mirror in flight finish, a bounded while (the sweep ended: fetch-all follows)."""
        if self._thread is not None:
            self._thread.join(wait_secs)

    def _once(self, outputs: str, runs) -> None:
        try:
            copy_runs_here(self.transport, outputs, self.artifacts, runs)
            self.done += 1
        except Exception as exc:  # noqa: BLE001 - a mirror never breaks the wait; next tick retries
            self.errors += 1
            self.on_error(f"mirror of {', '.join(runs)}: {getattr(exc, 'message', None) or exc}")


def copy_runs_here(transport, outputs: str, artifacts: os.PathLike, runs, *, update: bool = False) -> None:
    """One rsync of the run dirs ``runs`` of a pod's ``outputs`` into ``artifacts``; the
    files it brings are noted as brought in flux (for the next fetch). ``update``: a local
    file newer than the pod's is kept."""
    from workflow.sweep.fetch import save_in_flux
    from workflow.sweep.resume import rsync_runs

    Path(artifacts).mkdir(parents=True, exist_ok=True)
    # 24: files vanished mid-transfer (a run still writing) -- fine.
    stats = rsync_runs(transport, runs, ENGINE_FILES, transport.rsync_target(outputs.rstrip("/") + "/"),
                       f"{artifacts}/", ok_codes=(0, 24), extra=["--update"] if update else [])
    brought: dict = {}
    for path in stats.transferred:
        run, _, rel = path.partition("/")
        if rel:
            brought.setdefault(run, []).append(rel)
    for run, rels in brought.items():
        save_in_flux(artifacts, run, rels, merge=True)


def pull_from(pod, runs) -> Optional[str]:
    """Bring the dirs of ``runs`` from ``pod``, which they leave while it answers, into the
    local artifacts (a local file newer than the pod's kept), so that their launch on
    another pod starts from the freshest copy (SPEC §8: the old pod's dir when it is
    reachable). Returns why it could not (None: done, or they have no dir there)."""
    from workflow import runtime

    with runtime.on_pod(pod):
        cfg = runtime.config()
        try:
            found = runtime.agent().call("run.manifest", runs=list(runs), files=False)
            there = [r for r in runs if (found["runs"].get(r) or {}).get("exists")]
            if there:
                copy_runs_here(runtime.transport(), found["outputs_dir"],
                               cfg.local_path(cfg.get("local.artifacts_dir")), there, update=True)
        except Exception as exc:  # noqa: BLE001 - the local copy is the fallback
            return getattr(exc, "message", None) or str(exc)
    return None


def for_current_pod(on_error: Optional[Callable[[str], None]] = None) -> Mirror:
    """The mirror of the pod this thread works on, from ``sweep.mirror_interval_secs``."""
    from workflow import runtime

    cfg = runtime.config()
    return Mirror(runtime.transport(), cfg.local_path(cfg.get("local.artifacts_dir")),
                  float(cfg.get("sweep.mirror_interval_secs", 60) or 0), on_error=on_error)
