"""``wf sweep-report`` for real: a 3-run sweep of a minimal-GPT-style script (one run
failing), fetched, reported, and the page opened in Debian's headless Chromium with
every host unresolvable: the charts render (one per metric, one curve per run), the
page makes no network request, sorting works, and a screenshot is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from test_metrics import MINIGPT
from test_sweep_run_helpers import WF, SweepProject

CHROMIUM = shutil.which("chromium")
NO_NETWORK = '--host-resolver-rules=MAP * ~NOTFOUND'

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"),
    pytest.mark.xdist_group("chromium"),  # one browser at a time, and the module's report made once
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A finished, fetched 3-run sweep and its report."""
    root = tmp_path_factory.mktemp("report") / "project"
    (root / "configs").mkdir(parents=True)
    sp = SweepProject(root, {"sweep": {"entrypoint": "minigpt.py", "args": ["{config}"]}}, """\
        run_id,config,seed,overrides,notes
        lr-low,configs/tiny.json,0,--learning_rate=0.001 --max_iters=40,
        lr-high,configs/tiny.json,0,--learning_rate=0.01 --max_iters=40,
        broken,configs/tiny.json,0,--no_such_flag=1,
        """)
    (sp.repo / "examples" / "minigpt.py").write_text(MINIGPT)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
    sp.wf("fetch-all", check=0)
    # the fetched run holds what the script wrote and the run's own files, not the engine's bookkeeping
    assert {".status.lock", "wrapper.log"} <= set(os.listdir(sp.outputs / "lr-low"))
    assert sorted(os.listdir(root / "artifacts" / "lr-low")) == ["command.sh", "status.json", "stdout.log",
                                                                  "summary.json"]
    page = root / "artifacts" / "report.html"
    assert f"wf sweep-report writes {page}" in sp.wf("sweep-status", check=0).stdout
    out = sp.wf("sweep-report", check=0)
    assert f"wrote {page}" in out.stdout
    assert f"report: {page} " in sp.wf("sweep-status", check=0).stdout
    # a pool's placement record names the pod of each run (here as if two pods had run them)
    (root / ".podflow" / "pool-sweep.json").write_text(json.dumps(
        {"sweep_id": "s", "runs": {"lr-low": "p0", "lr-high": "p1", "broken": "p0"}}))
    sp.wf("sweep-report", check=0)
    return sp, page


def dump_dom(page, tmp_path):
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", NO_NETWORK,
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_charts_render_offline_one_per_metric_one_curve_per_run(report, tmp_path):
    sp, page = report
    text = page.read_text()
    assert "http://" not in re.sub(r"(?s)<script>.*?</script>", "", text)  # nothing outside the bundle links out
    dom = dump_dom(page, tmp_path)
    charts = dict(re.findall(r'<div id="chart-([\w/.-]+)" class="plotly-graph-div[^"]*js-plotly-plot(.*?)</svg>', dom,
                             re.S))
    assert set(charts) == {"train_loss", "val_loss", "loss", "time", "mfu"}
    for name, svg in charts.items():
        # two runs have series; the broken one has none (it failed before its first step)
        assert svg.count('class="trace scatter') == 2, name
    assert "lr-low" in dom and "lr-high" in dom
    table = dom.split('<table id="runs">')[1].split("</table>")[0]
    assert table.count("<tr data-run=") == 3 and "--learning_rate=0.01 --max_iters=40" in table
    assert "<th>pod</th>" in table and re.search(r'data-run="lr-high"><td>lr-high</td><td[^>]*>success</td><td>p1</td>',
                                                    table)
    assert "Runs that did not succeed" in dom and 'id="tail-broken"' in dom and "KeyError" in dom
    shot = tmp_path / "report.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", NO_NETWORK,
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
                           f"--screenshot={shot}", "--window-size=1400,1800", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 20000, proc.stderr[-2000:]


def test_no_request_leaves_the_page_and_headers_sort(report):
    playwright = pytest.importorskip("playwright.sync_api")
    _, page_path = report
    requests = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", NO_NETWORK])
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_selector("#chart-val_loss .main-svg")
        box = page.locator("#chart-val_loss .scatterlayer .trace .point").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_selector("#chart-val_loss .hoverlayer .hovertext")
        hover = page.text_content("#chart-val_loss .hoverlayer")
        assert "run lr-" in hover and "val_loss" in hover

        def order():
            return page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")

        best = page.locator("#runs th", has_text=re.compile(r"^best val_loss$"))
        best.click()
        assert order() == ["lr-high", "lr-low", "broken"]  # lowest val_loss first, no value last
        best.click()
        assert order()[:2] == ["lr-low", "lr-high"]
        page.locator("#runs th", has_text="run").first.click()
        assert order() == ["broken", "lr-high", "lr-low"]
        browser.close()
    assert requests and all(u.startswith("file://") for u in requests), requests


def test_without_plotly_it_says_which_extra_to_install(report, tmp_path):
    sp, _ = report
    blocker = tmp_path / "noplotly"
    (blocker / "plotly").mkdir(parents=True)
    (blocker / "plotly" / "__init__.py").write_text("raise ImportError('plotly is not installed (test)')\n")
    env = {"PYTHONPATH": str(blocker)}
    proc = subprocess.run([WF, "sweep-report"],
                          cwd=sp.root, capture_output=True, text=True, env=dict(os.environ, **env), timeout=120)
    assert proc.returncode == 2 and "pip install 'podflow[report]'" in proc.stderr and "Traceback" not in proc.stderr
