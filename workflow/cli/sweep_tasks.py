"""sweep tasks (SPEC §3): the sweep CSV and the sweep on the pod."""

from __future__ import annotations

import shlex
from typing import List, Optional

from workflow import pool, runtime
from workflow.cli.boundary import print_json, wf_task
from workflow.cli.pods import POD_HELP, on_pods


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

    Checks the file itself (header, run ids, seeds, overrides, gpus, timeout_secs, nodes), not
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


def render_status(st, pod_of=None, nodes_of=None) -> str:
    """The text of ``sweep-status``: a header with counts and percent, one line per run,
    the last log lines of runs that did not succeed. ``pod_of`` (run id -> pod, a pool's)
    adds a pod column; ``nodes_of`` (run id -> its nodes, a multi-node run's ``nodes``
    entries) a line under the run naming each node's pod and state."""
    if st.state == "none":
        return "no sweep has been started on this pod (wf sweep-start)"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.counts.items()))
    done = sum(v for k, v in st.counts.items() if k in ("success", "failed", "timed_out", "cancelled", "lost"))
    lines = [f"sweep {st.sweep_id}: {st.state} (state {st.fsm_state}); {done}/{len(st.runs)} done "
             f"({st.percent:.0f}%): {counts}"]
    width = max([len(r.id) for r in st.runs] + [3])
    pod_col = (lambda run_id: f"{pod_of.get(run_id, '-'):<4}  ") if pod_of else (lambda run_id: "")
    lines.append(f"  {'run':<{width}}  {'pod   ' if pod_of else ''}{'state':<9}  {'exit':>4}  {'time':>7}  metrics")
    for r in st.runs:
        code = "-" if r.exit_code is None else str(r.exit_code)
        partial = "" if r.metrics_complete else " (log still being read)"
        lines.append(f"  {r.id:<{width}}  {pod_col(r.id)}{r.state:<9}  {code:>4}  {_fmt_secs(r.duration_secs):>7}  "
                     f"{_fmt_metrics(r.metrics, r.best)}{partial}".rstrip())
        if (nodes_of or {}).get(r.id):
            lines.append(f"  {'':<{width}}  nodes: " + ", ".join(
                f"{n['rank']} {n['pod']} {n['state']}" + ("" if n.get("exit_code") is None else f" ({n['exit_code']})")
                for n in nodes_of[r.id]))
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
    "pod": POD_HELP,
})
def sweep_start(c, match=None, start_at=None, limit: Optional[int] = None, dry_run=False, retry_failed=False, csv=None,
                json=False, pod=None):
    """Start the sweep on the pod in tmux and return (every row not already ok).

    Validates the CSV here (exit 2, line numbers), checks on the pod that every row's
    config exists (exit 2), uploads the CSV to _manifests/sweep-latest.csv (plus a
    timestamped copy with the effective config), moves the state to SWEEP_RUNNING and
    starts the runner in tmux session sweep.tmux_session. Allowed from CHECKED_OUT,
    SWEEP_COMPLETED, or SWEEP_RUNNING whose runner is dead (exit 3 otherwise).

    On a pool every row goes to one pod (the one that ran it before, else the least
    busy per GPU) and each pod starts its share; .podflow/pool-sweep.json keeps which
    pod holds each run. A pod that cannot be reached is left out: the rows go to the
    pods that answer (its runs known to have ended ok stay ok there), a warning names it
    (on stderr; in --json its entry carries the error) and the exit code is 0 when the
    others started; 4 when no pod answers. Any other failure on a pod (a bad CSV there, a
    refusing state machine) stops the whole start before anything runs.

    A row with nodes: n (or sweep.nodes) runs on n pods at once, one torchrun node each,
    joined by the c10d rendezvous on node 0's address (SPEC §9); --dry-run shows each
    node's command and environment. Before the launch each node must reach node 0 on
    the rendezvous port, or nothing starts (exit 2).
    """
    from workflow.cli.task_tasks import _int
    from workflow.sweep import multinode, pooled
    from workflow.sweep.control import start_sweep

    cfg = runtime.config()
    selection = dict(csv=csv, match=match, start_at=start_at, limit=_int(limit, "--limit"), retry_failed=retry_failed)
    placed = pooled.plan(pool.select(cfg, pod), dry_run=dry_run, **selection)
    holders = [p for p in pool.select(cfg, pod) if p.name in placed.runs]
    if not holders and placed.unreachable:
        pool.raise_failures(list(placed.unreachable))
    if not holders:
        from workflow.errors import InputError

        raise InputError("every selected run is held by a pod outside --pod (.podflow/pool-sweep.json)",
                         hint="leave --pod out, or name the pod that holds them (wf sweep-status shows it)")
    gangs = placed.gangs
    if gangs and not dry_run:
        multinode.probe_rendezvous(gangs, {p.name: p for p in holders})
    results = on_pods(pod, lambda: start_sweep(runtime.config(), runtime.agent(), runtime.fsm(), dry_run=dry_run,
                                               run_ids=placed.runs[runtime.current_pod().name],
                                               nodes=placed.nodes.get(runtime.current_pod().name, {}),
                                               probed=placed.probed.get(runtime.current_pod().name), **selection),
                      render=lambda started: _print_started(started, dry_run, retry_failed),
                      to_doc=lambda started: started.to_dict(), json=json, pods=holders, raise_errors=False,
                      earlier=placed.unreachable)
    started = [r for r in results if r.ok]
    refused = {r.pod.name: r.error for r in results if not r.ok and r not in placed.unreachable}
    if gangs and refused and not dry_run:
        import sys

        for line in multinode.end_unstarted(gangs, refused, {p.name: p for p in holders}):
            print(f"warning: {line}", file=sys.stderr)
    if started and not dry_run:
        pooled.save(cfg, {pr.plan.run_id: r.pod.name for r in started for pr in r.value.runs
                          if pr.plan.node_rank == 0}, started[0].value.sweep_id, csv=csv,
                    nodes={run_id: node.pods for run_id, node in gangs.items()}, left=placed.left)
    if placed.unreachable:
        import sys

        for r in placed.unreachable:
            print(f"warning: {r.pod.name} could not be reached ({getattr(r.error, 'message', r.error)}): "
                  f"left out; its rows went to {', '.join(p.name for p in holders)}"
                  + (f" ({', '.join(sorted(placed.left))} leave it)" if placed.left else ""), file=sys.stderr)
    pool.raise_failures([r for r in results if r not in placed.unreachable])


def _print_started(started, dry_run: bool, retry_failed: bool) -> None:
    from workflow.sweep.control import describe_plan

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


@wf_task(help={"watch": "refresh until the sweep ends: a live screen in a terminal (podflow[watch]), else plain lines",
               "json": "print one JSON document",
               "interval": "seconds between refreshes with --watch (default 2)", "pod": POD_HELP})
def sweep_status(c, watch=False, json=False, interval=None, pod=None):
    """Counts by state, percent done, each run's state, exit code, duration and latest metrics, and cost.

    The cost is the pod's price times the time since the first run started, and an
    estimate to finish at the same pace ("cost" in --json). Runs that did not succeed
    show how they ended (exit status, signal, torchrun's failed ranks) and their last
    log lines. One round trip whatever the number of runs (one per pod, the pods read at
    once); on a pool --json adds pods: [{name, state (up|down), counts}] and each run's pod.
    With --watch on a pool each refresh also balances it as sweep-wait does (idle pods take
    pending runs; a down pod's runs are re-placed with pool.recover).
    """
    import time

    from workflow.results.watch import live_available, live_watch
    from workflow.sweep.control import metrics_options
    from workflow.sweep.control import sweep_status as fetch_status

    opts = metrics_options(runtime.config())

    def read():
        return on_pods(pod, lambda: _with_cost(fetch_status(runtime.agent(), metrics=opts)), raise_errors=False)

    if watch and pod is None and len(pool.pods(runtime.config())) > 1:  # a pool watched is kept busy
        keeper = _keeper(opts, json, each=_with_cost)

        def read():  # noqa: F811 - the pool's reads balance it too
            return keeper.round().results

    results = read()
    pause = float(interval or 2.0)
    if watch and not json and live_available():
        live_watch(lambda: _screen(read()), pause, first=_screen(results))
        print(_report_line(runtime.config()))
        return
    while True:
        doc = _show(results, json, cost=True)
        if not watch or doc is None or doc["state"] != "running":
            if not json:
                print(_report_line(runtime.config()))
            pool.raise_failures(results)
            return
        time.sleep(pause)
        results = read()


def _one_status(results):
    """The sweep as one ``SweepStatus``: a lone pod's own, or the pool's merged."""
    from workflow.sweep import pooled
    from workflow.sweep.control import SweepStatus

    if len(results) == 1:
        pool.raise_failures(results)
        return results[0].value[0]
    statuses = [pool.PodResult(r.pod, value=r.value[0]) if r.ok else r for r in results]
    return SweepStatus.from_doc(pooled.merge(statuses, pooled.load(runtime.config())))


def _screen(results):
    """What the live screen shows: the sweep's status and its cost line."""
    st = _one_status(results)
    costs = [r.value[1] for r in results if r.ok]
    cost = costs[0] if len(results) == 1 else _pool_cost(costs)
    return st, (render_cost(cost) if costs and st.state != "none" else None)


def _with_cost(st):
    """A pod's sweep status and its cost (read in the pod's context: its price)."""
    from workflow.money.spend import sweep_cost

    return st, sweep_cost(runtime.config(), st)


def _pool_cost(costs):
    """The pool's cost: the pods' spend and estimates added up (None where one is unknown)."""
    def total(key):
        values = [c.get(key) for c in costs]
        return None if not values or any(v is None for v in values) else round(sum(values), 6)

    etas = [c.get("eta_secs") for c in costs if c.get("eta_secs") is not None]
    return {"price_per_hour": total("price_per_hour"), "elapsed_secs": max([c["elapsed_secs"] for c in costs] or [0.0]),
            "spent_usd": total("spent_usd"), "eta_secs": max(etas) if etas else None,
            "estimate_to_finish_usd": total("estimate_to_finish_usd")}


def _show(results, json: bool, cost: bool = False):
    """Print the sweep of the pods read (results of ``(status, cost)``; one pod: its own
    status, as ever; several: one status of the pool). Returns the JSON document (None: a
    lone pod could not be read)."""
    from workflow.sweep import pooled
    from workflow.sweep.control import SweepStatus

    if len(results) == 1:
        r = results[0]
        if not r.ok:
            return None
        st, spend = r.value
        doc = st.to_json()
        for run in doc["runs"]:
            run["pod"] = r.pod.name
        doc["pods"] = [{"name": r.pod.name, "state": "up", "counts": dict(doc["counts"])}]
        if cost:
            doc["cost"] = spend
        if json:
            print_json(doc)
        else:
            print(render_status(st), flush=True)
            if cost and st.state != "none":
                print(render_cost(spend))
        return doc
    from workflow.sweep.balance import record_ends

    statuses = [pool.PodResult(r.pod, value=r.value[0]) if r.ok else r for r in results]
    # what each read says of how runs ended is kept: it is what is known if their pod dies
    placement = record_ends(runtime.config(), {r.pod.name: r.value for r in statuses if r.ok},
                            pooled.load(runtime.config()))
    doc = pooled.merge(statuses, placement)
    costs = {r.pod.name: r.value[1] for r in results if r.ok}
    for entry in doc["pods"]:
        if entry["name"] in costs and cost:
            entry["cost"] = costs[entry["name"]]
    if cost:
        doc["cost"] = _pool_cost(list(costs.values()))
    if json:
        print_json(doc)
        return doc
    print("pods: " + "; ".join(f"{p['name']} {p['state']}"
                               + (f" ({', '.join(f'{k} {v}' for k, v in sorted(p['counts'].items()))})"
                                  if p["counts"] else "")
                               + (f": {p['error']}" if p.get("error") else "") for p in doc["pods"]))
    print(render_status(SweepStatus.from_doc(doc), pod_of={run["id"]: run["pod"] for run in doc["runs"]},
                        nodes_of={run["id"]: run["nodes"] for run in doc["runs"] if run.get("nodes")}))
    if cost and doc["state"] != "none":
        print(render_cost(doc["cost"]))
    return doc


def _holding(which):
    """The selected pods that hold runs of the pool's sweep (all selected when none is known)."""
    from workflow.sweep import pooled

    cfg = runtime.config()
    selected = pool.select(cfg, which)
    holders = set(pooled.load(cfg).holders())
    return [p for p in selected if p.name in holders] or list(selected)


@wf_task(help={"timeout_secs": "give up after N seconds (exit 5; the sweep goes on)", "json": "print one JSON document",
               "pod": POD_HELP})
def sweep_wait(c, timeout_secs: Optional[float] = None, json=False, pod=None):
    """Wait until the sweep ends: exit 0 if every run succeeded, 1 if any did not, 5 on timeout.

    On a pool (no --pod) it reads every pod at once every few seconds and keeps the pool
    busy: a pod whose runner ended takes pending runs from the busiest pod's queue. A
    pod is down when its provider says so or when it cannot be reached for
    pool.down_after_secs; with pool.recover (default) its unfinished runs are re-placed on
    the pods that are up (their attempt counted one more) and the wait goes on. Each move
    is printed (on stderr with --json). Meanwhile every running run's dir is mirrored
    into <local.artifacts_dir>/<run_id>/ every sweep.mirror_interval_secs (0: off), in
    the background: a run launched again on a pod without its files resumes from that
    copy. A mirror that fails is logged and retried."""
    import sys

    from invoke import Exit

    from workflow.cli.task_tasks import _secs
    from workflow.sweep import mirror
    from workflow.sweep.control import metrics_options, wait_sweep

    secs, opts = _secs(timeout_secs, "--timeout-secs"), metrics_options(runtime.config())

    def mirrored(st):  # in a pod's context: its running runs mirrored, in the background
        name = runtime.current_pod().name
        if name not in mirrors:
            mirrors[name] = mirror.for_current_pod(
                lambda text: print(f"podflow: {name}: {text} (retried)", file=sys.stderr))
        mirrors[name].tick(st)
        return st, None

    def one_pod():
        name = runtime.current_pod().name
        logged = mirror.for_current_pod(lambda text: print(f"podflow: {name}: {text} (retried)", file=sys.stderr))
        return wait_sweep(runtime.agent(), secs, metrics=opts, mirror=logged), None

    mirrors = {}
    if pod is None and len(pool.pods(runtime.config())) > 1:
        try:
            results = _keeper(opts, json, each=mirrored).wait(secs).results
        finally:
            for m in mirrors.values():
                m.close()
        doc = _show(results, json)
        down = {p["name"] for p in doc["pods"] if p["state"] == "down"}
        if not runtime.config().get("pool.recover", True) or any(r["state"] == "unknown" for r in doc["runs"]):
            pool.raise_failures(results)
        else:  # a down pod's runs were re-placed: its failure to answer is no longer the sweep's
            pool.raise_failures([r for r in results if r.pod.name not in down])
    else:
        results = on_pods(pod, one_pod, pods=_holding(pod), raise_errors=False)
        doc = _show(results, json)
        pool.raise_failures(results)
    if not doc or not doc["runs"] or any(run["state"] != "success" for run in doc["runs"]):
        raise Exit(code=1)


def _keeper(opts, json: bool, recover=None, each=None):
    """What balances the pool between reads (workflow.sweep.balance), saying each move."""
    import sys

    from workflow.sweep.balance import Keeper

    def say(text: str) -> None:
        print(text, file=sys.stderr if json else sys.stdout, flush=True)

    cfg = runtime.config()
    return Keeper(cfg, pool.pods(cfg), metrics=opts, say=say, recover=recover, each=each)


@wf_task(help={"replace": "first rent a replacement for each down cloud pod (same name), bootstrap it and "
                          "check it out at the pool's commit (default: pool.replace)",
               "json": "print one JSON document"})
def sweep_recover(c, replace=False, json=False):
    """Re-place a down pod's unfinished runs on the pods that are up, now.

    Reads every pod twice; a pod its provider says is stopped, exited, terminated,
    broken or gone, or that cannot be reached either time, counts as down here (sweep-wait
    waits pool.down_after_secs before it says so). Its runs not known to have ended
    (pending, running, lost) go to the pods whose runner has ended, their attempt counted
    one more; runs no pod can take now wait for one (sweep-wait places them). A down pod
    that comes back is not given them again, and its copies of them are cancelled. With
    --replace (or pool.replace) a cloud pod is first replaced; on a private network
    (pod.network: cluster) the replacement joins it (Vast: an offer of the overlay's
    physical cluster), and a RunPod instant cluster, which adds no pod, is refused (exit 2).
    Exit 0 when no run is left without a pod, 1 otherwise, 4 when no pod is up or a
    replacement could not be rented (its runs went to the pods that are up).
    """
    import sys

    from invoke import Exit

    from workflow.errors import ConnectionFailed
    from workflow.sweep.balance import Health, Keeper
    from workflow.sweep.control import metrics_options

    def say(text: str) -> None:
        print(text, file=sys.stderr if json else sys.stdout, flush=True)

    cfg = runtime.config()
    if replace:
        from workflow.providers import clusters

        clusters.check_growable(cfg)  # a RunPod instant cluster: refused before anything moves
    keeper = Keeper(cfg, pool.pods(cfg), metrics=metrics_options(cfg), say=say, recover=True,
                    replace=bool(replace) or bool(cfg.get("pool.replace", False)), health=Health(0.0))
    keeper.round(balance=False)
    rnd = keeper.round()
    if not any(r.ok for r in rnd.results):
        raise ConnectionFailed("no pod of the pool can be reached: nothing to re-place the runs on",
                               hint="wf check-connection; with a cloud pool, --replace rents new pods")
    doc = keeper.doc(rnd)
    waiting = [run["id"] for run in doc["runs"] if run["state"] == "unknown"]
    if json:
        print_json({"down": rnd.down, "moved": rnd.moved, "waiting": waiting,
                    "pods": [{"name": p["name"], "state": p["state"]} for p in doc["pods"]]})
    else:
        print(f"down: {', '.join(f'{n} ({why})' for n, why in rnd.down.items()) or 'none'}; "
              f"re-placed: {', '.join(rnd.moved) or 'none'}"
              + (f"; waiting for a free pod: {', '.join(waiting)} (wf sweep-wait places them)" if waiting else ""))
    if keeper.unreplaced:  # asked for and not done (e.g. no offer can join the network): exit 4
        raise next(iter(keeper.unreplaced.values()))
    if waiting:
        raise Exit(code=1)


@wf_task(help={"grace_secs": "seconds between TERM and KILL for each run (default 10)", "json": "print one JSON document",
               "pod": POD_HELP})
def sweep_stop(c, grace_secs=None, json=False, pod=None):
    """Stop the sweep: cancel every active run, end the runner; state back to CHECKED_OUT.

    Each active run's whole process group (torchrun workers included) gets TERM, then
    KILL after the grace period; its state becomes cancelled. Allowed from SWEEP_RUNNING.
    On a pool: on every pod that holds runs of the sweep, at once."""
    from workflow.cli.task_tasks import _secs
    from workflow.sweep.control import stop_sweep

    grace = _secs(grace_secs, "--grace-secs")
    holders = _holding(pod)

    def work():
        if len(holders) > 1 and runtime.fsm().status()["state"] != "SWEEP_RUNNING":
            return None  # this pod's share of the pool's sweep has ended: nothing to stop here
        return stop_sweep(runtime.agent(), runtime.fsm(), grace_secs=grace)

    on_pods(pod, work, render=_print_stopped, to_doc=_stopped_doc, json=json, pods=holders)


def _stopped_doc(res):
    if res is None:
        return {"cancelled": [], "state_moved": False, "note": "its share of the sweep had ended"}
    doc = res.status.to_json()
    doc.update(cancelled=list(res.cancelled), state_moved=res.state_moved, note=res.note)
    return doc


def _print_stopped(res) -> None:
    if res is None:
        print("nothing to stop: its share of the sweep had ended")
        return
    print(f"sweep stopped: {len(res.cancelled)} run(s) cancelled"
          + (f" ({', '.join(res.cancelled)})" if res.cancelled else "")
          + ("; state CHECKED_OUT" if res.state_moved else f"; {res.note}"))
