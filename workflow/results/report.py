"""``wf sweep-report``: one self-contained HTML file from the fetched runs (SPEC §11).

The page holds a sortable runs table (state, pod, duration, overrides, last and best
metrics), one Plotly chart per metric with one curve per run (hover: run, step,
value), and the log tails of the runs that did not succeed. Plotly's JavaScript bundle
(shipped in the ``plotly`` Python package) is inlined, so the file opens offline and
fetches nothing. Needs the ``report`` extra (``pip install 'podflow[report]'``).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import List, Sequence

from workflow.agent.metrics import STEP_KEYS
from workflow.errors import InputError
from workflow.results.runs import RunResult

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.success { color: #17813a; } .failed, .timed_out, .lost { color: #b3261e; } .cancelled { color: #8a6d00; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.chart { width: 620px; height: 380px; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
"""

#: Click a header to sort by it (again: reverse). Numbers sort as numbers, "-" last.
_SORT_JS = """
document.querySelectorAll("#runs th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = document.querySelector("#runs tbody");
    var asc = !th.classList.contains("asc");
    document.querySelectorAll("#runs th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(asc ? "asc" : "desc");
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var v = row.cells[col].getAttribute("data-v");
      return v === null ? row.cells[col].textContent : v;
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      if (x === "") return 1; if (y === "") return -1;
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _plotly():
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise InputError("wf sweep-report draws its charts with Plotly, which is not installed",
                         hint="pip install 'podflow[report]'") from None
    return go, pio, get_plotlyjs


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _cell(value, *, num: bool = False) -> str:
    v = "" if value is None or isinstance(value, str) and num else value
    attr = f' data-v="{html.escape(str(v))}"' if num else ""
    return f'<td{" class=num" if num else ""}{attr}>{html.escape(_fmt(value))}</td>'


def _table(runs: Sequence[RunResult], names: Sequence[str]) -> str:
    has_pod = any(r.pod for r in runs)
    primary = sorted({r.best["name"] for r in runs if r.best})
    best = "best " + "/".join(primary) if primary else "best"
    head = ["run", "state"] + (["pod"] if has_pod else []) + ["duration (s)", "overrides", best, "best step"]
    head += [f"{n} (last)" for n in names]
    rows = []
    for r in runs:
        cells = [f"<td>{html.escape(r.id)}</td>",
                 f'<td class="{html.escape(r.state or "")}">{html.escape(r.state or "-")}</td>']
        if has_pod:
            cells.append(f"<td>{html.escape(r.pod or '-')}</td>")
        cells.append(_cell(r.duration_secs, num=True))
        cells.append(f"<td><code>{html.escape(r.overrides)}</code></td>")
        best = r.best or {}
        cells.append(_cell(best.get("value"), num=True))
        cells.append(_cell(best.get("step"), num=True))
        cells += [_cell(r.last.get(n), num=True) for n in names]
        rows.append(f'<tr data-run="{html.escape(r.id)}">' + "".join(cells) + "</tr>")
    return ('<table id="runs"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _charts(runs: Sequence[RunResult], names: Sequence[str], go, pio) -> List[str]:
    out = []
    for name in names:
        fig = go.Figure()
        for r in runs:
            points = r.series.get(name)
            if points:
                fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=r.id,
                                         mode="lines+markers" if len(points) < 30 else "lines",
                                         hovertemplate=f"run {r.id}<br>step %{{x}}<br>{name} %{{y:.4g}}<extra></extra>"))
        fig.update_layout(title=name, xaxis_title="step", yaxis_title=name, margin=dict(l=50, r=10, t=40, b=40),
                          hovermode="closest", template="plotly_white")
        out.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"chart-{name}",
                               config={"displaylogo": False}, default_width="620px", default_height="380px"))
    return out


def render_report(runs: Sequence[RunResult], *, title: str) -> str:
    """The whole HTML page (Plotly's bundle inlined)."""
    go, pio, get_plotlyjs = _plotly()
    names = sorted({n for r in runs for n, pts in r.series.items() if pts and n not in STEP_KEYS})
    primary = [r.best["name"] for r in runs if r.best]
    if primary:
        names.sort(key=lambda n: n != primary[0])
    counts: dict = {}
    for r in runs:
        counts[r.state or "unknown"] = counts.get(r.state or "unknown", 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    fails = [r for r in runs if r.log_tail]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
        f"<script>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(runs)} run(s): {html.escape(summary)}. Click a column header to sort.</p>",
        _table(runs, names),
        "<h2>Metrics</h2>" if names else "<p>No metric series in these runs' logs.</p>",
        '<div class="charts">' + "".join(f'<div class="chart">{c}</div>' for c in _charts(runs, names, go, pio))
        + "</div>",
    ]
    if fails:
        parts.append("<h2>Runs that did not succeed</h2>")
        for r in fails:
            parts.append(f'<h3 id="tail-{html.escape(r.id)}">{html.escape(r.id)}: {html.escape(r.state or "")}</h3>'
                         f"<pre>{html.escape(r.log_tail or '')}</pre>")
    parts.append(f"<script>{_SORT_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(runs: Sequence[RunResult], out: Path, *, title: str) -> Path:
    """Write the page next to ``out`` then rename it into place (a reader never sees half)."""
    text = render_report(runs, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
