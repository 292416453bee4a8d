"""sweep tasks (SPEC §3): the sweep CSV and the sweep on the pod."""

from __future__ import annotations

import shlex
from typing import List, Optional

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


def _fmt_secs(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _fmt_value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_metrics(metrics, best=None, limit: int = 4) -> str:
    """The last values (the primary metric and losses first), then the primary's best."""
    if not metrics:
        return ""
    first = ([best["name"]] if best else []) + ["val_loss", "eval_loss", "loss", "train_loss", "acc", "accuracy"]
    keys = [k for k in dict.fromkeys(first) if k in metrics]
    keys += [k for k in metrics if k not in keys]
    text = " ".join(f"{k}={_fmt_value(metrics[k])}" for k in keys[:limit])
    if best:
        text += f"  (best {best['name']} {_fmt_value(best['value'])} at step {best['step']})"
    return text


def render_status(st) -> str:
    """The text of ``sweep-status``: a header with counts and percent, one line per run,
    the last log lines of runs that did not succeed."""
    if st.state == "none":
        return "no sweep has been started on this pod (wf sweep-start)"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.counts.items()))
    done = sum(v for k, v in st.counts.items() if k in ("success", "failed", "timed_out", "cancelled", "lost"))
    lines = [f"sweep {st.sweep_id}: {st.state} (state {st.fsm_state}); {done}/{len(st.runs)} done "
             f"({st.percent:.0f}%): {counts}"]
    width = max([len(r.id) for r in st.runs] + [3])
    lines.append(f"  {'run':<{width}}  {'state':<9}  {'exit':>4}  {'time':>7}  metrics")
    for r in st.runs:
        code = "-" if r.exit_code is None else str(r.exit_code)
        lines.append(f"  {r.id:<{width}}  {r.state:<9}  {code:>4}  {_fmt_secs(r.duration_secs):>7}  "
                     f"{_fmt_metrics(r.metrics, r.best)}".rstrip())
    return "\n".join(lines + failure_tails(st))


def failure_tails(st, max_lines: int = 10) -> List[str]:
    """For each run that did not succeed: how it ended (state, error, exit status,
    signal, torchrun's failed workers) and the last lines of its log, indented."""
    lines = []
    for r in st.runs:
        if r.state in ("failed", "timed_out", "lost", "cancelled") and (r.log_tail or r.error):
            lines.append(f"--- {r.id}: {'; '.join([r.state + (': ' + r.error if r.error else '')] + _exit_detail(r))}")
            for text in (r.log_tail or "").rstrip("\n").splitlines()[-max_lines:]:
                lines.append(f"    {text}")
    return lines


def _exit_detail(r) -> List[str]:
    """How a run ended beyond its state: the launcher's exit status and signal, then
    torchrun's failed workers, root cause first (``rank 1 killed by SIGABRT (root cause)``)."""
    parts = []
    if r.exit_code is not None and f"exit code {r.exit_code}" not in (r.error or ""):
        parts.append(f"exit code {r.exit_code}")
    if r.signal and r.signal not in (r.error or ""):
        parts.append(f"killed by {r.signal}")
    for w in r.worker_failures or ():
        how = f"killed by {w['signal_name']}" if w.get("signal_name") else f"exit code {w.get('exitcode')}"
        parts.append(f"rank {w.get('rank')} {how}{' (root cause)' if w.get('root_cause') else ''}")
    return parts


def render_cost(cost) -> str:
    """The money line of ``sweep-status``: spend so far and an estimate to finish."""
    if cost.get("price_per_hour") is None:
        return "cost: unknown price (cloud: 'wf pod-status' records it; ssh/local: set pod.price_per_hour)"
    line = f"cost: ${cost['spent_usd']:.3f} so far at ${cost['price_per_hour']:.3f}/h"
    if cost.get("estimate_to_finish_usd") is not None and cost.get("eta_secs"):
        line += f"; about ${cost['estimate_to_finish_usd']:.3f} more to finish ({_fmt_secs(cost['eta_secs'])})"
    return line


@wf_task(help={
    "match": "only runs whose run_id contains this text",
    "start_at": "skip the rows before this run_id (CSV order)",
    "limit": "at most N runs (after --start-at and --match)",
    "dry_run": "print each run's exact argv and environment; change nothing",
    "retry_failed": "only rows that ran and did not succeed (failed, timed_out, lost, cancelled)",
    "csv": "sweep CSV (default: sweep.csv from the config)",
    "json": "print one JSON document",
})
def sweep_start(c, match=None, start_at=None, limit: Optional[int] = None, dry_run=False, retry_failed=False, csv=None, json=False):
    """Start the sweep on the pod in tmux and return (every row not already ok).

    Validates the CSV here (exit 2, line numbers), checks on the pod that every row's
    config exists (exit 2), uploads the CSV to _manifests/sweep-latest.csv (plus a
    timestamped copy with the effective config), moves the state to SWEEP_RUNNING and
    starts the runner in tmux session sweep.tmux_session. Allowed from CHECKED_OUT,
    SWEEP_COMPLETED, or SWEEP_RUNNING whose runner is dead (exit 3 otherwise).
    """
    from workflow import runtime
    from workflow.cli.task_tasks import _int
    from workflow.sweep.control import describe_plan, start_sweep

    cfg = runtime.config()
    started = start_sweep(cfg, runtime.agent(), runtime.fsm(), csv=csv, match=match, start_at=start_at,
                          limit=_int(limit, "--limit"), dry_run=dry_run, retry_failed=retry_failed)
    if json:
        print_json(started.to_dict())
        return
    if dry_run:
        print("\n".join(describe_plan(started)))
        print(f"dry run: {len(started.to_run)} of {len(started.runs)} run(s) would start; nothing was changed")
        return
    skipped = len(started.runs) - len(started.to_run)
    print(f"sweep {started.sweep_id} started: {len(started.to_run)} run(s)"
          + (f", {skipped} skipped (already ok{' or not failed' if retry_failed else ''})" if skipped else "")
          + f"; GPUs: {','.join(started.gpus) or 'none (CPU)'}")
    print(f"  runner in tmux session '{started.session}'; CSV at {started.manifests.get('latest')}")
    print("  follow with: wf sweep-status [--watch]   wait with: wf sweep-wait")


def _report_line(cfg) -> str:
    """Where the HTML report is (or how to get one)."""
    page = cfg.local_path(cfg.get("local.artifacts_dir")) / "report.html"
    if page.is_file():
        return f"report: {page} (wf fetch-all, then wf sweep-report, refreshes it)"
    return f"report: none yet (wf fetch-all, then wf sweep-report writes {page})"


@wf_task(help={"watch": "refresh until the sweep ends: a live screen in a terminal (podflow[watch]), else plain lines", "json": "print one JSON document",
               "interval": "seconds between refreshes with --watch (default 2)"})
def sweep_status(c, watch=False, json=False, interval=None):
    """Counts by state, percent done, each run's state, exit code, duration and latest metrics, and cost.

    The cost is the pod's price times the time since the first run started, and an
    estimate to finish at the same pace ("cost" in --json). Runs that did not succeed
    show how they ended (exit status, signal, torchrun's failed ranks) and their last
    log lines. One round trip whatever the number of runs.
    """
    import time

    from workflow import runtime
    from workflow.money.spend import sweep_cost
    from workflow.results.watch import live_available, live_watch
    from workflow.sweep.control import metrics_options
    from workflow.sweep.control import sweep_status as fetch_status

    agent = runtime.agent()
    opts = metrics_options(runtime.config())
    st = fetch_status(agent, metrics=opts)
    if json and not watch:
        print_json(dict(st.to_json(), cost=sweep_cost(runtime.config(), st)))
        return
    pause = float(interval or 2.0)
    if watch and not json and live_available():
        st = live_watch(lambda: fetch_status(agent, metrics=opts), pause, first=st)
        print(_report_line(runtime.config()))
        return
    while True:
        if json:
            print_json(dict(st.to_json(), cost=sweep_cost(runtime.config(), st)))
        else:
            print(render_status(st), flush=True)
            if st.state != "none":
                print(render_cost(sweep_cost(runtime.config(), st)))
        if not watch or not st.active:
            if not json:
                print(_report_line(runtime.config()))
            return
        time.sleep(pause)
        st = fetch_status(agent, metrics=opts)


@wf_task(help={"timeout_secs": "give up after N seconds (exit 5; the sweep goes on)", "json": "print one JSON document"})
def sweep_wait(c, timeout_secs: Optional[float] = None, json=False):
    """Wait until the sweep ends: exit 0 if every run succeeded, 1 if any did not, 5 on timeout."""
    from invoke import Exit

    from workflow import runtime
    from workflow.cli.task_tasks import _secs
    from workflow.sweep.control import metrics_options, wait_sweep

    st = wait_sweep(runtime.agent(), _secs(timeout_secs, "--timeout-secs"), metrics=metrics_options(runtime.config()))
    if json:
        print_json(st.to_json())
    else:
        print(render_status(st))
    if not st.ok:
        raise Exit(code=1)


@wf_task(help={"grace_secs": "seconds between TERM and KILL for each run (default 10)", "json": "print one JSON document"})
def sweep_stop(c, grace_secs=None, json=False):
    """Stop the sweep: cancel every active run, end the runner; state back to CHECKED_OUT.

    Each active run's whole process group (torchrun workers included) gets TERM, then
    KILL after the grace period; its state becomes cancelled. Allowed from SWEEP_RUNNING."""
    from workflow import runtime
    from workflow.cli.task_tasks import _secs
    from workflow.sweep.control import stop_sweep

    res = stop_sweep(runtime.agent(), runtime.fsm(), grace_secs=_secs(grace_secs, "--grace-secs"))
    if json:
        doc = res.status.to_json()
        doc.update(cancelled=list(res.cancelled), state_moved=res.state_moved, note=res.note)
        print_json(doc)
        return
    print(f"sweep stopped: {len(res.cancelled)} run(s) cancelled"
          + (f" ({', '.join(res.cancelled)})" if res.cancelled else "")
          + ("; state CHECKED_OUT" if res.state_moved else f"; {res.note}"))
