"""data tasks: move data to the pod and results back (SPEC §3)."""

from __future__ import annotations

import sys

from workflow.cli.boundary import wf_task
from workflow.cli.pods import POD_HELP, on_pods


def _progress(json_out: bool):
    from workflow import runtime
    from workflow.datapush import stderr_progress

    level = runtime.config().get("progress", "milestones")
    if level == "realtime" or (level == "milestones" and sys.stderr.isatty()):
        return stderr_progress
    return None


def _size(n: int) -> str:
    from workflow.datapush import _human

    return _human(n)


@wf_task(help={"path": "local directory to push", "name": "name under remote.data_dir (default: the directory's name)",
               "json": "print one JSON document", "pod": POD_HELP})
def push_data(c, path, name=None, json=False, pod=None):
    """Push a local dataset to remote.data_dir/<name>: manifest, upload, verify every SHA-256, place.

    Pushing unchanged data again transfers nothing. A checksum that differs on the pod
    fails (exit 1) naming the files; nothing is placed, and the next push re-sends them.
    On a pool the data goes to every pod at once (or to --pod).
    """
    from workflow import runtime
    from workflow.datapush import push_data as push, validate_name

    if name is not None:
        validate_name(name, "dataset name")

    def work():
        cfg = runtime.config()
        return push(runtime.transport(), runtime.agent(), cfg.remote.data_dir, cfg.local_path(path), name,
                    progress=_progress(json))

    on_pods(pod, work, render=_print_push, to_doc=lambda result: result.to_doc(), json=json)


def _print_push(result) -> None:
    s = result.rsync
    print(f"{result.name}: {result.files} files, {_size(result.bytes)} verified and placed at {result.placed}")
    print(f"  sent {s.files_transferred} files ({_size(s.bytes_transferred)}) in {result.seconds:.1f}s"
          + (f"; re-sent {len(result.resent)} bad file(s)" if result.resent else ""))


def _fetcher(json_out: bool, sha256: bool):
    from workflow import runtime
    from workflow.sweep.fetch import Fetcher

    cfg = runtime.config()
    return Fetcher(runtime.transport(), runtime.agent(), cfg.remote.outputs_dir,
                   cfg.local_path(cfg.local.artifacts_dir), config=cfg, progress=_progress(json_out),
                   sha256=sha256)


_SHA_HELP = ("also compare the SHA-256 of every transferred file with the pod's (slower; rsync "
             "already checks each file it transfers with a whole-file checksum, and sizes and "
             "times are always compared with the pod's listing)")


def _print_table(result) -> None:
    rows = [("RUN", "STATE", "FILES", "BYTES", "FETCH")]
    for r in result.runs:
        fetch = "complete" if r.complete else ("partial (run still writing)" if r.in_flux or not r.ended else "partial")
        rows.append((r.run_id, r.state or "-", str(r.files), _size(r.bytes), fetch))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    s = result.rsync
    if s is not None:
        print(f"transferred {s.files_transferred} files ({_size(s.bytes_transferred)}) in {result.seconds:.1f}s")


@wf_task(help={"run_id": "the run to fetch (a run_id of the sweep CSV)",
               "exclude_checkpoints": "leave out *.pt, *.pth, *.ckpt, *.safetensors and checkpoint*/ dirs",
               "sha256": _SHA_HELP, "json": "print one JSON document", "pod": POD_HELP})
def fetch_run(c, run_id, exclude_checkpoints=False, sha256=False, json=False, pod=None):
    """Fetch one run dir into local.artifacts_dir/<run_id>/ (incremental, verified, safe while it runs).

    On a pool, from the pod that holds the run (or --pod). A multi-node run's dir is
    node 0's; node i's log comes beside it as stdout.node<i>.log."""
    from workflow.sweep.fetch import validate_run_id

    from workflow import pool, runtime
    from workflow.sweep import pooled

    validate_run_id(run_id)
    cfg = runtime.config()
    holder = pooled.load(cfg).pod_of(run_id)
    pods = pool.select(cfg, pod if pod is not None else holder)[:1]  # the pod that holds it (else p0)
    results = on_pods(pod, lambda: _fetcher(json, sha256).fetch_run(run_id, exclude_checkpoints=exclude_checkpoints),
                      render=_print_table, to_doc=_run_doc, json=json, pods=pods)
    gang = pooled.load(cfg).nodes.get(run_id)
    if gang and pod is None:  # a multi-node run: its other nodes' logs beside node 0's dir
        from pathlib import Path

        from workflow.sweep import multinode

        multinode.fetch_node_logs(run_id, gang, {p.name: p for p in pool.pods(cfg)}, Path(results[0].value.runs[0].dest))


def _run_doc(result):
    doc = result.runs[0].to_doc()
    doc["rsync"] = result.rsync.to_doc() if result.rsync else None
    doc["seconds"] = round(result.seconds, 3)
    return doc


@wf_task(help={"exclude_checkpoints": "leave out *.pt, *.pth, *.ckpt, *.safetensors and checkpoint*/ dirs",
               "sha256": _SHA_HELP, "json": "print one JSON document", "pod": POD_HELP})
def fetch_all(c, exclude_checkpoints=False, sha256=False, json=False, pod=None):
    """Fetch every run dir under remote.outputs_dir in one rsync; prints run, files, bytes, state.

    On a pool, each run from the pod that holds it, the pods in parallel (or only --pod's);
    a copy of a run on another pod (it moved) is left there."""
    from workflow import runtime
    from workflow.sweep import pooled

    placement = pooled.load(runtime.config())

    def work():
        here = runtime.current_pod().name
        elsewhere = {run_id for run_id, name in placement.runs.items() if name != here}
        return _fetcher(json, sha256).fetch_all(exclude_checkpoints=exclude_checkpoints, skip=elsewhere)

    on_pods(pod, work, render=_print_all, to_doc=lambda result: result.to_doc(), json=json)


def _print_all(result) -> None:
    if not result.runs:
        print("no runs on the pod yet", file=sys.stderr)
        return
    _print_table(result)
