"""results tasks (SPEC §11): what a sweep produced, for people to look at."""

from __future__ import annotations

from pathlib import Path

from workflow.cli.boundary import wf_task


@wf_task(help={"out": "HTML file to write (default: <local.artifacts_dir>/report.html)"})
def sweep_report(c, out=None):
    """Write one self-contained HTML report of the fetched runs; it opens offline.

    A sortable table (run, state, pod, duration, overrides, last and best metrics), one
    chart per metric with a curve per run, and the log tails of the runs that did not
    succeed. Reads local.artifacts_dir only (wf fetch-all first); no pod is needed.
    Needs Plotly: pip install 'podflow[report]' (exit 2 without it).
    """
    from workflow import runtime
    from workflow.errors import InputError
    from workflow.results.report import write_report
    from workflow.results.runs import load_runs
    from workflow.sweep import pooled
    from workflow.sweep.control import metrics_options

    cfg = runtime.config()
    artifacts = cfg.local_path(cfg.get("local.artifacts_dir"))
    opts = metrics_options(cfg)
    runs = load_runs(artifacts, csv_path=cfg.local_path(cfg.sweep.csv), patterns=opts["patterns"],
                     primary=opts["primary"], mode=opts["mode"], pods=pooled.load(cfg).runs)
    if not runs:
        raise InputError(f"no fetched runs in {artifacts}", hint="wf fetch-all brings the sweep's runs here first")
    path = write_report(runs, Path(out).expanduser().resolve() if out else artifacts / "report.html",
                        title=f"{cfg.get('project', 'podflow')}: sweep report")
    print(f"wrote {path} ({len(runs)} run(s)); open it in a browser (it works offline)")
