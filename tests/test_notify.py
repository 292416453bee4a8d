"""Notifications from the pod (SPEC §10): the watchdog sends ``run_failed`` and
``sweep_completed`` through Apprise (``json://`` to a local ``http.server``) after the
client process is gone; an unreachable URL is retried a bounded number of times, logged
in ``_control/notify.log`` without the URL, and never holds up a run."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_sweep_run_helpers import TORCH_VENV, SweepProject

pytest.importorskip("apprise")
pytestmark = pytest.mark.skipif(not (TORCH_VENV / "bin").exists(), reason="needs .venv-torch (bash scripts/setup)")


@pytest.fixture
def hook():
    got = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append((self.path, json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], got
    server.shutdown()
    server.server_close()


def start_watchdog(sp):
    from workflow import runtime
    from workflow.money.watchdog import launch_current

    runtime.reset()
    started = launch_current(runtime.config(), runtime.agent())
    runtime.reset()
    assert started and started["running"]
    return started["pid"]


def wait_until(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_failed_and_sweep_completed_arrive_with_the_client_gone(project, hook, monkeypatch):
    port, got = hook
    monkeypatch.setenv("WF_NOTIFY_URLS", f"json://127.0.0.1:{port}/hook")
    sp = SweepProject(project, {"project": "notif"},
                      """\
                      run_id,config,seed,overrides,notes
                      good,configs/tiny.json,0,steps=2,
                      bad,configs/tiny.json,1,fail=1,
                      """)
    pid = start_watchdog(sp)
    try:
        sp.wf("sweep-start", check=0)  # the client returns; the watchdog alone sends
        wait_until(lambda: len(got) >= 2, 60, "two notifications")
        by_title = {doc["title"]: doc["message"] for _, doc in got}
        failed = [t for t in by_title if "run bad failed" in t]
        assert failed and "[notif]" in failed[0] and "on pod p0" in failed[0]
        assert "exit code 1" in by_title[failed[0]] and "boom: failing on purpose" in by_title[failed[0]]
        done = [t for t in by_title if "sweep completed" in t]
        assert done and by_title[done[0]] == "counts: failed 1, success 1"
        log_path = sp.outputs / "_control" / "notify.log"
        wait_until(lambda: log_path.exists() and log_path.read_text().count("delivered") == 2, 30, "the log")
        log = log_path.read_text()
        assert "run_failed: url #1: delivered" in log and "sweep_completed: url #1: delivered" in log
        assert str(port) not in log  # the URL is a secret: not in the log, any file, the watchdog's env or argv
        url = f"127.0.0.1:{port}/hook".encode()
        for path in project.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert url not in path.read_bytes(), path
        for name in ("environ", "cmdline"):
            assert url not in open(f"/proc/{pid}/{name}", "rb").read()
    finally:
        os.kill(pid, signal.SIGTERM)


def test_an_unreachable_url_is_retried_logged_and_never_slows_a_run(project, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("WF_NOTIFY_URLS", f"json://127.0.0.1:{closed}/nobody")
    sp = SweepProject(project, {},
                      """\
                      run_id,config,seed,overrides,notes
                      bad,configs/tiny.json,1,fail=1,
                      next,configs/tiny.json,2,steps=2,
                      """)
    pid = start_watchdog(sp)
    try:
        sp.wf("sweep-start", check=0)
        sp.wf("sweep-wait", "--timeout-secs", "120", check=1)
        log_path = sp.outputs / "_control" / "notify.log"
        wait_until(lambda: log_path.exists() and log_path.read_text().count("run_failed: url #1: failed") == 3,
                   60, "three failed attempts")
        log = log_path.read_text()
        assert "attempt 3/3" in log and "delivered" not in log and str(closed) not in log
        nxt = json.loads((sp.outputs / "next" / "summary.json").read_text())
        bad = json.loads((sp.outputs / "bad" / "status.json").read_text())
        nxt_status = json.loads((sp.outputs / "next" / "status.json").read_text())
        # the next run started right after the failed one, not after the retries (1 s + 2 s)
        from datetime import datetime

        t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()  # noqa: E731
        assert t(nxt_status["started_at"]) - t(bad["finished_at"]) < 1.0
        assert nxt["ok"] is True
    finally:
        os.kill(pid, signal.SIGTERM)
