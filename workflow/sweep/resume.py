"""Resume, not restart (SPEC §8), the engine's side: where a run launched again starts from.

Before ``sweep-start`` launches a run that ran before (restarted after ``lost``,
retried, placed on another pod), it decides which copy of the run's earlier files is
the freshest: the pod's own out dir (``sweep.probe`` reports its script files and the
newest mtime) or the local copy under ``<local.artifacts_dir>/<run_id>/`` (what
``sweep-wait`` mirrored, or ``fetch-run`` brought). The local copy wins only when the pod
has none or when its newest file is newer; it is then pushed up first (one rsync for all
such runs, the engine's files left out), and the runner on the pod sees the files:
``WF_RESUME=1`` and ``sweep.resume_args`` (``workflow.agent.resume``).

The attempt counts every launch anywhere: one more than the highest of the pod's
``status.json`` and the local copy's (a run moved from a dead pod keeps counting).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from workflow.agent.resume import RUN_ENGINE_FILES, earlier_files


@dataclass(frozen=True)
class Resume:
    """How one run is launched this time."""

    attempt: int
    """This launch's attempt (1: never launched before anywhere we know of)."""
    source: Optional[str] = None
    """Where its earlier files come from: ``pod`` (its out dir there), ``local`` (pushed
    up from ``local_dir`` first) or None (none: it starts afresh)."""
    local_dir: Optional[str] = None

    @property
    def resumes(self) -> bool:
        return self.source is not None


def local_copy(artifacts: Path, run_id: str) -> Mapping[str, Any]:
    """``{"files", "newest_ns", "attempt", "state"}`` of the local copy of ``run_id`` (its
    script files; its attempt and state from the ``status.json`` the mirror or a fetch
    brought, 0/None without one)."""
    root = artifacts / run_id
    doc: Mapping[str, Any] = {}
    try:
        doc = json.loads((root / "status.json").read_text())
        attempt = int(doc.get("attempt") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        doc, attempt = {}, 0
    return dict(earlier_files(str(root)), attempt=attempt, state=doc.get("state"))


def decide(pod_run: Optional[Mapping[str, Any]], local: Mapping[str, Any], local_dir: Path) -> Resume:
    """The launch of a run from what the pod's probe says of it (``pod_run``) and its local copy.

    A local copy counts only as the copy of a run that did not end ok (running when the
    mirror took it, lost, failed, ...): the results of a finished run (or a dir that is
    no run's copy) are never taken for a run in progress, so a run started afresh on a
    new pod stays fresh."""
    pod_run = pod_run or {}
    if local.get("state") in (None, "success"):
        local = {}
    earlier = pod_run.get("earlier") or {}
    attempt = max(int(pod_run.get("attempt") or 0), int(local.get("attempt") or 0)) + 1
    pod_files, pod_newest = int(earlier.get("files") or 0), earlier.get("newest_ns")
    if local.get("files") and (not pod_files or (local.get("newest_ns") or 0) > (pod_newest or 0)):
        return Resume(attempt, "local", str(local_dir))
    return Resume(attempt, "pod" if pod_files else None)


def push_local(transport, outputs_dir: str, artifacts: Path, run_ids: Iterable[str]) -> None:
    """Copy the local copies of ``run_ids`` into their out dirs on the pod (one rsync; the
    engine's files stay out: the pod keeps its own status and log)."""
    run_ids = sorted(set(run_ids))
    if run_ids:
        rsync_runs(transport, run_ids, RUN_ENGINE_FILES, f"{artifacts}/",
                   transport.rsync_target(outputs_dir.rstrip("/") + "/"))


def rsync_runs(transport, run_ids: Iterable[str], leave_out: Iterable[str], src: str, dest: str,
               ok_codes=(0,), extra: Iterable[str] = ()):
    """One ``rsync -a`` of the run dirs ``run_ids`` from ``src`` to ``dest`` (dirs of runs),
    without the files named in ``leave_out`` at each run dir's top; only changed files move.
    Returns its ``RsyncStats``.

    ``--whole-file``: what changes in a run dir is mostly a checkpoint rewritten whole,
    where rsync's delta only adds checksum work (``bench/mirror.py``: 8 rewritten 64 MB
    checkpoints 17.5 s with it, 5.2 s without)."""
    from workflow.datapush import run_rsync

    rules = [f"- /*/{name}" for name in leave_out] + [f"+ /{run}/" for run in run_ids] + ["- /*"]
    with tempfile.NamedTemporaryFile("w", prefix=".podflow-runs-", suffix=".rules", delete=False) as fh:
        fh.write("\n".join(rules) + "\n")
        rules_file = fh.name
    try:
        return run_rsync(["-a", "--whole-file", "--modify-window=-1", *extra, f"--filter=merge {rules_file}", src,
                          dest], transport=transport, ok_codes=ok_codes)
    finally:
        os.unlink(rules_file)
