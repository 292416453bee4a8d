"""``fetch-run`` / ``fetch-all``: run dirs from the pod into ``local.artifacts_dir``, verified.

One fetch is: a ``run.manifest`` call (which runs exist, their states, the pod's clock),
one rsync for all the runs asked for (``-a --partial --modify-window=-1``, no
compression), a second ``run.manifest`` call listing every file (size, mtime, and
SHA-256 of the files this rsync brought that have not changed since it started),
a comparison with the local copy, one re-fetch of the files that differ, and a record
in the local session (``workflow.session.record_fetched``).

Safe while a run still writes: files vanishing mid-transfer (rsync exit 24) are fine;
a file that changed after the transfer started is "in flux", not a mismatch, and the
run is not "fully fetched". A local file this fetch (or the previous one) brought
while it was in flux, and which the pod no longer has, was a temporary file (an atomic
write's temp file): it is removed. Other local files are never deleted, even when the
pod deleted them (your local copy may be the only one left).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Dict, List, Optional, Sequence, Tuple

from workflow.agent.data import ENGINE_FILES
from workflow.datapush import NAME_RE, Progress, RsyncStats, run_rsync, sha256_file
from workflow.errors import CheckFailed, InputError, RemoteCommandFailed

CHECKPOINT_EXCLUDES = ("*.pt", "*.pth", "*.ckpt", "*.safetensors", "checkpoint*/")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
#: Files whose pod mtime is this close to the start of the transfer count as in flux.
FLUX_MARGIN_NS = 1_000_000_000
#: Slack for the time our request takes to reach the pod.
SEND_MARGIN_SECS = 0.05
#: Local bookkeeping (not a valid run id, so it never collides with a run dir).
STATE_DIR = ".podflow"


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not NAME_RE.match(run_id):
        raise InputError(f"invalid run id {run_id!r}: expected {NAME_RE.pattern}",
                         hint="run ids are the run_id column of the sweep CSV")
    return run_id


@dataclass(frozen=True)
class RunFetch:
    """The outcome of fetching one run."""

    run_id: str
    dest: str
    state: Optional[str]
    """The run's state on the pod (``status.json``) when the fetch began."""
    ended: bool
    files: int
    bytes: int
    transferred: int
    complete: bool
    """The run had ended, nothing changed during the transfer, and every file matched."""
    in_flux: Tuple[str, ...] = ()
    refetched: Tuple[str, ...] = ()
    removed_transient: Tuple[str, ...] = ()
    local_only: Tuple[str, ...] = ()
    checkpoints_excluded: bool = False
    verified_by: str = "size+mtime"
    """How the local copy was compared with the pod's: ``size+mtime`` or ``sha256``."""

    def to_doc(self) -> Dict:
        return {"checkpoints_excluded": self.checkpoints_excluded, "verified_by": self.verified_by, "run_id": self.run_id, "dest": self.dest, "state": self.state, "ended": self.ended,
                "files": self.files, "bytes": self.bytes, "transferred": self.transferred,
                "complete": self.complete, "in_flux": list(self.in_flux), "refetched": list(self.refetched),
                "removed_transient": list(self.removed_transient), "local_only": list(self.local_only)}


@dataclass(frozen=True)
class FetchResult:
    runs: Tuple[RunFetch, ...]
    rsync: Optional[RsyncStats]
    seconds: float
    agent_calls: int = 0

    def to_doc(self) -> Dict:
        return {"runs": [r.to_doc() for r in self.runs], "rsync": self.rsync.to_doc() if self.rsync else None,
                "seconds": round(self.seconds, 3), "agent_calls": self.agent_calls}


def _is_checkpoint(rel: str) -> bool:
    parts = rel.split("/")
    return rel.endswith(CHECKPOINT_SUFFIXES) or any(p.startswith("checkpoint") for p in parts[:-1])


def _local_files(root: Path, exclude_checkpoints: bool) -> Dict[str, os.stat_result]:
    out: Dict[str, os.stat_result] = {}
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and not (exclude_checkpoints and _is_checkpoint(rel)):
                out[rel] = st
    return out


def _escape(path: str) -> str:
    """An rsync filter pattern matching ``path`` literally."""
    return "".join("\\" + ch if ch in "*?[\\" else ch for ch in path)


class Fetcher:
    """Fetches runs of one pod into ``artifacts``; one instance per invocation."""

    def __init__(self, transport, agent, outputs_dir: str, artifacts: os.PathLike, *, config=None,
                 progress: Optional[Progress] = None, sha256: bool = False):
        self.transport, self.agent = transport, agent
        self.sha256 = sha256
        """False: compare sizes and mtimes only (rsync's own transfer checksum still applies)."""
        self.outputs_dir = outputs_dir.rstrip("/")
        self.artifacts = Path(artifacts)
        self.config = config
        self.progress = progress

    # -- public

    def fetch_run(self, run_id: str, *, exclude_checkpoints: bool = False) -> FetchResult:
        validate_run_id(run_id)
        return self._fetch([run_id], exclude_checkpoints=exclude_checkpoints, explicit=True)

    def fetch_all(self, *, exclude_checkpoints: bool = False, skip: Collection[str] = ()) -> FetchResult:
        """Every run on the pod but those in ``skip`` (a pool's runs that another pod holds)."""
        return self._fetch(None, exclude_checkpoints=exclude_checkpoints, explicit=False, skip=skip)

    # -- the steps

    def _fetch(self, runs: Optional[List[str]], *, exclude_checkpoints: bool, explicit: bool,
               skip: Collection[str] = ()) -> FetchResult:
        started = time.monotonic()
        calls0 = self.agent.calls
        self._outputs_abs = self.outputs_dir
        if explicit:
            run_ids = sorted(runs)
        else:  # one call to list them; fetch-run needs none before its rsync
            pre = self.agent.call("run.manifest", runs=None, files=False)
            self._outputs_abs = pre["outputs_dir"]
            run_ids = sorted(set(pre["runs"]) - set(skip))
            if not run_ids:
                return FetchResult((), None, time.monotonic() - started, self.agent.calls - calls0)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        t_start = time.time()
        try:
            stats = self._rsync(self._outputs_abs, run_ids, exclude_checkpoints)
        except RemoteCommandFailed as exc:
            if exc.code != 23:
                raise
            self._missing(run_ids)  # outputs_dir itself missing: say which run
            raise
        by_run: Dict[str, List[str]] = {r: [] for r in run_ids}
        for path in stats.transferred:
            run, _, rel = path.partition("/")
            if run in by_run and rel:
                by_run[run].append(rel)
        results = self._verify(run_ids, by_run, t_start, exclude_checkpoints, explicit)
        for r in results:
            self._record(r)
        complete = [r.run_id for r in results if r.complete]
        if complete:  # the watchdog destroys a pod only when every run on it was fetched
            self.agent.call("autostop.mark_fetched", runs=complete)
        return FetchResult(tuple(results), stats, time.monotonic() - started, self.agent.calls - calls0)

    def _missing(self, run_ids, info=None) -> None:
        info = info or self.agent.call("run.manifest", runs=list(run_ids), files=False)["runs"]
        missing = [r for r in run_ids if not info[r]["exists"]]
        if missing:
            known = self.agent.call("run.manifest", runs=None, files=False)["runs"]
            raise InputError(f"no run {missing[0]!r} under {self.outputs_dir} on the pod",
                             hint=("runs there: " + ", ".join(sorted(known)[:20])) if known else
                             "no runs there yet (sweep-status shows the sweep)")

    def _rsync(self, outputs: str, run_ids: Sequence[str], exclude_checkpoints: bool,
               only: Optional[Dict[str, List[str]]] = None) -> RsyncStats:
        """One rsync of ``outputs/`` limited to ``run_ids`` (or just the files in ``only``)."""
        rules = []
        if exclude_checkpoints:
            rules += [f"- {p}" for p in CHECKPOINT_EXCLUDES]
        if only is not None:
            for run, paths in only.items():
                parts_seen = set()
                for rel in paths:
                    parts = rel.split("/")
                    for i in range(1, len(parts)):
                        d = "/".join(parts[:i])
                        if d not in parts_seen:
                            parts_seen.add(d)
                            rules.append(f"+ /{_escape(run)}/{_escape(d)}/")
                    rules.append(f"+ /{_escape(run)}/{_escape(rel)}")
                rules.append(f"+ /{_escape(run)}/")
                rules.append(f"- /{_escape(run)}/**")
        else:
            rules += [f"- /*/{_escape(name)}" for name in ENGINE_FILES]
            rules += [f"+ /{run}/" for run in run_ids]
        rules.append("- /*")
        with tempfile.NamedTemporaryFile("w", prefix=".podflow-fetch-", suffix=".rules", delete=False) as fh:
            fh.write("\n".join(rules) + "\n")
            rules_file = fh.name
        try:
            args = ["-a", "--partial", "--modify-window=-1", f"--filter=merge {rules_file}"]
            if only is not None:
                args.append("--ignore-times")
            src = self.transport.rsync_target(outputs.rstrip("/") + "/")
            # 24: files vanished mid-transfer (a run still writing) -- fine.
            return run_rsync([*args, src, f"{self.artifacts}/"], transport=self.transport,
                             progress=self.progress, ok_codes=(0, 24))
        finally:
            os.unlink(rules_file)

    def _manifest(self, run_ids, exclude_checkpoints, sha_paths, stable_before=None, paths=None, since=None):
        req = dict(runs=list(run_ids), files=True, exclude_checkpoints=exclude_checkpoints, sha256=sha_paths)
        if since is not None:
            # The pod counts back from its own clock: no clock skew between us and it.
            req.update(stable_age_secs=time.time() - since + SEND_MARGIN_SECS,
                       running_margin_secs=FLUX_MARGIN_NS / 1e9)
        else:
            req["stable_before_ns"] = stable_before
        if paths is not None:
            req["paths"] = paths
        return self.agent.call("run.manifest", **req)["runs"]

    def _local_hashes(self, run_ids, sha_paths) -> Dict[Tuple[str, str], Optional[str]]:
        from concurrent.futures import ThreadPoolExecutor

        jobs = [(r, p) for r in run_ids for p in sha_paths.get(r, [])]

        def one(job):
            try:
                return sha256_file(self.artifacts / job[0] / job[1])
            except OSError:
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            return dict(zip(jobs, pool.map(one, jobs)))

    def _compare(self, run, pod_files, local, hashes, stable_before):
        """-> (mismatched paths, in-flux paths)."""
        stable_before = stable_before[run] if isinstance(stable_before, dict) else stable_before
        bad, flux = [], []
        for f in pod_files:
            path = f["path"]
            changing = f["mtime_ns"] >= stable_before
            st = local.get(path)
            ok = st is not None and st.st_size == f["size"] and st.st_mtime_ns == f["mtime_ns"]
            if ok and f.get("sha256") is not None:
                ok = hashes.get((run, path)) == f["sha256"]
            if not ok:
                (flux if changing else bad).append(path)
            elif changing:
                flux.append(path)
        return bad, flux

    def _verify(self, run_ids, by_run, t_start, exclude_checkpoints, explicit) -> List[RunFetch]:
        sha_paths = {r: by_run[r] for r in run_ids if by_run[r]} if self.sha256 else {}
        # The pod hashes while we hash our copies of the same files.
        box: Dict[str, Dict] = {}
        worker = threading.Thread(target=lambda: box.update(
            h=self._local_hashes(run_ids, sha_paths)), daemon=True)
        worker.start()
        pod = self._manifest(run_ids, exclude_checkpoints, sha_paths, since=t_start)
        worker.join()
        if explicit:
            self._missing(run_ids, pod)
        info = pod
        stable_before = {r: pod[r].get("stable_before_ns", 0) for r in run_ids}
        hashes = box.get("h", {})
        compared = {}
        for run in run_ids:
            local = _local_files(self.artifacts / run, exclude_checkpoints)
            compared[run] = (local,) + self._compare(run, pod[run]["files"], local, hashes, stable_before)
        wrong = {run: c[1] for run, c in compared.items() if c[1]}
        refetched: Dict[str, List[str]] = {}
        if wrong:  # once: the files that differ, whatever their times say
            self._rsync(self._outputs_abs, list(wrong), exclude_checkpoints, only=wrong)
            again = self._manifest(list(wrong), exclude_checkpoints, wrong, stable_before, paths=wrong)
            h2 = self._local_hashes(list(wrong), {r: [f["path"] for f in again[r]["files"]] for r in wrong})
            still = {}
            for run, paths in wrong.items():
                local = _local_files(self.artifacts / run, exclude_checkpoints)
                bad, _ = self._compare(run, again[run]["files"], local, h2, stable_before)
                if bad:
                    still[run] = bad
                refetched[run] = paths
                compared[run] = (local, [], compared[run][2])
            if still:
                names = [f"{run}/{p}" for run, ps in still.items() for p in ps]
                raise CheckFailed(
                    f"fetch: {len(names)} file(s) still differ from the pod after a re-fetch: "
                    + ", ".join(names[:20]) + (" ..." if len(names) > 20 else ""),
                    hint="the local copies are kept; check the pod's disk and run the fetch again")
        results = []
        for run in run_ids:
            local, _, flux = compared[run]
            pod_files = pod[run]["files"]
            on_pod = {f["path"] for f in pod_files}
            transient = self._remove_transients(run, local, on_pod, set(by_run[run]) | set(refetched.get(run, [])))
            local_only = sorted(set(local) - on_pod - set(transient))
            self._save_state(run, flux)
            ended = bool(info[run].get("ended_before"))
            results.append(RunFetch(
                run_id=run, dest=str(self.artifacts / run), state=info[run]["state"], ended=ended,
                files=len(pod_files), bytes=sum(f["size"] for f in pod_files), transferred=len(by_run[run]),
                complete=ended and not flux, in_flux=tuple(flux), refetched=tuple(refetched.get(run, [])),
                removed_transient=tuple(transient), local_only=tuple(local_only),
                checkpoints_excluded=exclude_checkpoints,
                verified_by="sha256" if self.sha256 else "size+mtime"))
        return results

    # -- transient files and local bookkeeping

    def _state_path(self, run: str) -> Path:
        return self.artifacts / STATE_DIR / f"{run}.json"

    def _load_state(self, run: str) -> Dict:
        try:
            return json.loads(self._state_path(run).read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, run: str, flux: Sequence[str]) -> None:
        save_in_flux(self.artifacts, run, flux)

    def _remove_transients(self, run, local, on_pod, brought_now) -> List[str]:
        """Local files gone from the pod that were brought in flux (now or last time)."""
        candidates = set(brought_now) | set(self._load_state(run).get("in_flux", []))
        removed = []
        for rel in sorted(set(local) - on_pod):
            if rel in candidates:
                try:
                    (self.artifacts / run / rel).unlink()
                    removed.append(rel)
                except FileNotFoundError:
                    pass
        return removed

    def _record(self, r: RunFetch) -> None:
        record_fetched(r, self.config)


def save_in_flux(artifacts: Path, run: str, flux: Sequence[str], *, merge: bool = False) -> None:
    """Record the local files of ``run`` that were brought while the run wrote them (a
    fetch, or the mirror of ``sweep-wait`` with ``merge``): the next fetch removes those the
    pod no longer has (an atomic write's temp file)."""
    p = Path(artifacts) / STATE_DIR / f"{run}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    if merge:
        try:
            flux = set(flux) | set(json.loads(p.read_text()).get("in_flux", []))
        except (OSError, ValueError, AttributeError):
            pass
    tmp = p.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps({"in_flux": sorted(flux), "at": time.time()}))
    os.replace(tmp, p)


def record_fetched(r: RunFetch, config) -> None:
    """Tell the session which run was fetched (so ``pod-down`` knows). Passes the details
    ``workflow.session.record_fetched`` accepts; without a ``complete`` flag, only a run
    fetched in full is recorded (a partial fetch must not count as fetched)."""
    try:
        from workflow import session
    except ImportError:
        return
    import inspect

    fn = getattr(session, "record_fetched", None)
    if fn is None:
        return
    params = inspect.signature(fn).parameters
    extra = {"fetched_at": time.time(), "files": r.files, "bytes": r.bytes, "complete": r.complete,
             "ended": r.ended, "state": r.state, "checkpoints_excluded": r.checkpoints_excluded}
    kwargs = {"dest": r.dest}
    if config is not None and "config" in params:
        kwargs["config"] = config
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs.update({k: v for k, v in extra.items() if accepts_any or k in params})
    if "complete" not in kwargs and not r.complete:
        return
    kwargs = {k: v for k, v in kwargs.items() if accepts_any or k in params}
    fn(r.run_id, **kwargs)
