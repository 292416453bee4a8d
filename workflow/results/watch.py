"""``sweep-status --watch``: a live screen redrawn in place (SPEC §11), drawn by Rich.

One line per run: its state, a progress bar where its progress is known (``step N/M``,
``max_iters`` in its configuration echo, tqdm lines), its latest primary metric and an
ETA; under them the sweep's cost line (spend so far, estimate to finish; SPEC §10). Rich's ``Live`` hides the cursor while it draws and gives the terminal back as it
was when the watch ends, Ctrl-C included. Without Rich (the ``watch`` extra), or when
stdout is not a terminal, the caller prints plain lines instead (``live_available``).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Tuple

from workflow.agent.metrics import pick_primary

STATE_STYLE = {"success": "green", "running": "cyan", "pending": "dim", "failed": "red", "timed_out": "red",
               "lost": "red", "cancelled": "yellow"}


def live_available(stream=None) -> bool:
    """True when a live screen can be drawn: Rich is installed and ``stream`` is a terminal."""
    import importlib.util

    stream = stream or sys.stdout
    return importlib.util.find_spec("rich") is not None and hasattr(stream, "isatty") and stream.isatty()


def _fmt_secs(secs) -> str:
    if secs is None:
        return "-"
    secs = int(secs)
    return f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}" if secs >= 3600 else f"{secs // 60}:{secs % 60:02d}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status_view(st, note: Optional[str] = None):
    """The screen for one ``SweepStatus``: a header, a table with one row per run, and
    ``note`` (the cost line) under it."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    done = sum(v for k, v in st.counts.items() if k in STATE_STYLE and k not in ("running", "pending"))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.counts.items()))
    head = Text(f"sweep {st.sweep_id}: {st.state}; {done}/{len(st.runs)} done ({st.percent:.0f}%): {counts}",
                style="bold")
    table = Table(box=None, padding=(0, 1), header_style="bold")
    for col, kw in (("run", {}), ("state", {}), ("progress", {"width": 32}), ("step", {"justify": "right"}),
                    ("metric", {}), ("ETA", {"justify": "right"})):
        table.add_column(col, no_wrap=True, **kw)
    for r in st.runs:
        prog = r.progress or {}
        total = prog.get("total")
        if total:
            bar = ProgressBar(total=float(total), completed=float(prog.get("step") or 0), width=30)
            step = f"{prog.get('step')}/{total}"
        elif r.state == "success":
            bar, step = ProgressBar(total=1.0, completed=1.0, width=30), "-"
        else:
            bar, step = Text("-"), "-"
        name = (r.best or {}).get("name") or pick_primary(r.metrics or {})
        metric = f"{name} {_fmt(r.metrics[name])}" if name and name in (r.metrics or {}) else "-"
        eta = _fmt_secs(prog.get("eta_secs")) if r.state == "running" else "-"
        table.add_row(r.id, Text(r.state, style=STATE_STYLE.get(r.state, "")), bar, step, metric, eta)
    foot = Text("Ctrl-C leaves the watch; the sweep goes on", style="dim")
    return Group(head, table, *([Text(note)] if note else []), foot)


def live_watch(fetch: Callable[[], Tuple[object, Optional[str]]], interval: float,
               first: Optional[Tuple[object, Optional[str]]] = None):
    """Redraw the status every ``interval`` s until the sweep is no longer running;
    ``fetch`` gives ``(status, note)``. Returns the last status. KeyboardInterrupt
    leaves the terminal restored."""
    from rich.console import Console
    from rich.live import Live

    st, note = first if first is not None else fetch()
    with Live(status_view(st, note), console=Console(), auto_refresh=False, transient=False) as live:
        while st.active:
            time.sleep(interval)
            st, note = fetch()
            live.update(status_view(st, note), refresh=True)
    return st
