"""sweep tasks (SPEC §3): the sweep CSV and the sweep on the pod."""

from __future__ import annotations

import shlex
from typing import Optional

from workflow.cli.boundary import print_json, wf_task


def _csv_path(csv: Optional[str]):
    from workflow import runtime

    cfg = runtime.config()
    return cfg.local_path(csv or cfg.sweep.csv)


@wf_task(help={"csv": "CSV to write (default: sweep.csv from the config)"})
def sweep_csv_template(c, csv=None):
    """Write a starter sweep CSV; never overwrites.

    The rows use the examples/ project (sweep.workdir: examples). Exit 2 if the file exists.
    """
    from workflow.sweep import write_template

    path = write_template(_csv_path(csv))
    print(f"wrote {path}: edit it, then run 'wf sweep-validate'")


@wf_task(help={"csv": "CSV to check (default: sweep.csv from the config)", "json": "print one JSON document"})
def sweep_validate(c, csv=None, json=False):
    """Check the sweep CSV: every bad row, by line.

    Checks the file itself (header, run ids, seeds, overrides, gpus, timeout_secs), not
    that the configs exist on the pod (sweep-start does). Exit 2 on any problem.
    """
    from workflow import runtime
    from workflow.sweep import read_sweep_csv

    path = _csv_path(csv)
    rows = read_sweep_csv(path)
    default_gpus = runtime.config().sweep.gpus_per_run
    if json:
        print_json({"csv": str(path), "ok": True, "runs": len(rows), "rows": [r.to_dict() for r in rows]})
        return
    counts = {}
    for r in rows:
        g = r.gpus or default_gpus
        counts[g] = counts.get(g, 0) + 1
    cpu = runtime.config().sweep.nproc_per_node
    parts = [f"{n} x {g if g else f'all visible (no GPUs: {cpu} CPU process(es))'}"
             for g, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    print(f"{path}: {len(rows)} run{'s' if len(rows) != 1 else ''} OK; GPUs per run: {', '.join(parts)}")
    width = max(len(r.run_id) for r in rows)
    for r in rows:
        extra = shlex.join(r.overrides)
        print(f"  {r.line:>4}  {r.run_id:<{width}}  {r.config}  seed={r.seed}"
              + (f"  gpus={r.gpus}" if r.gpus else "")
              + (f"  timeout={r.timeout_secs}s" if r.timeout_secs else "")
              + (f"  {extra}" if extra else ""))
