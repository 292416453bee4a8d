"""``sweep-status --watch`` for real: in a tmux pane (a terminal) it is a live Rich
screen redrawn in place with progress bars, the latest primary metric and an ETA, and
Ctrl-C leaves it with the terminal restored (cursor shown, exit 130); with stdout piped
it prints plain lines (no terminal codes) and ends with the sweep. Both show the
sweep's cost line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

from test_metrics import MINIGPT
from test_sweep_run_helpers import WF, SweepProject

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def slow_sweep(project, iters=300):
    sp = SweepProject(project, {"sweep": {"entrypoint": "minigpt.py", "args": ["{config}"]},
                                "pod": {"price_per_hour": 3.6}}, f"""\
        run_id,config,seed,overrides,notes
        first,configs/tiny.json,0,--max_iters={iters} --eval_interval=20,
        second,configs/tiny.json,0,--max_iters=20,
        """)
    (sp.repo / "examples" / "minigpt.py").write_text(MINIGPT.replace("time.sleep(0.01)", "time.sleep(0.05)"))
    return sp


class Pane:
    def __init__(self, name, cwd):
        self.sock = name
        self.tmux("new-session", "-d", "-s", "w", "-x", "150", "-y", "30", "-c", str(cwd),
                  "-e", "TERM=xterm-256color", "-e", f"PATH={os.environ['PATH']}", "bash", "--norc", "--noprofile")

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, check=True).stdout

    def text(self):
        return self.tmux("capture-pane", "-p", "-t", "w")

    def cursor_shown(self):
        return self.tmux("display", "-p", "-t", "w", "#{cursor_flag}").strip() == "1"

    def wait(self, pred, what, timeout=90):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.text()
            if pred(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()}")

    def kill(self):
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def test_live_screen_redraws_in_place_and_ctrl_c_restores_the_terminal(project):
    sp = slow_sweep(project)
    sp.wf("sweep-start", check=0)
    pane = Pane(f"results-watch-{os.getpid()}", project)
    try:
        pane.tmux("send-keys", "-t", "w", f"{shlex.quote(WF)} sweep-status --watch --interval 0.3; echo EXIT=$?",
                  "Enter")
        first = pane.wait(lambda t: "first" in t and "running" in t and "/300" in t, "the first run's progress")
        assert not pane.cursor_shown()  # Rich hides it while it draws
        step1 = int(first.split("/300")[0].split()[-1])
        later = pane.wait(lambda t: "/300" in t and int(t.split("/300")[0].split()[-1]) > step1 + 20, "a redraw")
        for text in (first, later):
            heads = [ln for ln in text.splitlines() if re.match(r"sweep \S+: running", ln)]
            assert len(heads) == 1 and text.count("Ctrl-C leaves") == 1, text  # redrawn in place, not scrolled
            assert text.count("cost: $") == 1 and "so far at $3.600/h" in text, text  # the money line (SPEC §10)
        line = next(ln for ln in later.splitlines() if ln.lstrip().startswith("first"))
        assert "━" in line and "loss " in line and ":" in line.split()[-1]  # bar, primary metric, ETA m:ss
        assert any(ln.lstrip().startswith("second") and "pending" in ln for ln in later.splitlines())
        pane.tmux("send-keys", "-t", "w", "C-c")
        done = pane.wait(lambda t: re.search(r"EXIT=\d", t), "the watch to end")
        assert "EXIT=130" in done and pane.cursor_shown()
        assert "Traceback" not in done
    finally:
        pane.kill()
        sp.wf("sweep-stop")


def test_piped_watch_prints_plain_lines_until_the_sweep_ends(project):
    sp = slow_sweep(project, iters=40)
    sp.wf("sweep-start", check=0)
    proc = subprocess.run([WF, "sweep-status", "--watch", "--interval", "0.5"], cwd=project, capture_output=True,
                          text=True, timeout=180, env=dict(os.environ, TERM="xterm-256color"))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout
    assert proc.stdout.count("sweep ") >= 2  # one block per refresh, then the final one
    last = proc.stdout.rsplit("sweep ", 1)[1]
    assert "completed" in last and "best val_loss" in last and "report:" in last and "cost: $" in last
