"""Notifications from the pod (SPEC §10): the watchdog sends ``run_failed`` and
``sweep_completed`` through Apprise (``json://`` to a local ``http.server``) after the
client process is gone; a URL that never answers never holds up a run; a failed attempt
is retried a bounded number of times (a refused connection, no answer, an error status),
each outcome logged in ``_control/notify.log`` without the URL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_sweep_run_helpers import TORCH_VENV, SweepProject

pytest.importorskip("apprise")
pytestmark = pytest.mark.skipif(not (TORCH_VENV / "bin").exists(), reason="needs .venv-torch (bash scripts/setup)")


@pytest.fixture
def endpoint():
    """``endpoint(codes)``: a local HTTP server recording each POST as (path, JSON body)
    and answering the next of ``codes`` (then 200); returns (port, the records)."""
    servers = []

    def make(codes=()):
        got, left = [], list(codes)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append((self.path, json.loads(body)))
                self.send_response(left.pop(0) if left else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1], got

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hook(endpoint):
    return endpoint()


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


@pytest.fixture
def silent():
    """A URL that accepts connections and never answers (a blackholed webhook)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_a_url_that_never_answers_does_not_hold_up_the_sweep(project, silent, monkeypatch):
    """The runs never wait on a delivery: the sweep ends while the notification of its
    failed run still hangs on its first attempt (30 s)."""
    monkeypatch.setenv("WF_NOTIFY_URLS", f"json://127.0.0.1:{silent}/nobody?rto=600")  # Apprise's read timeout
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
        assert json.loads((sp.outputs / "next" / "summary.json").read_text())["ok"] is True
        log_path = sp.outputs / "_control" / "notify.log"
        assert not log_path.exists() or "run_failed" not in log_path.read_text()  # still hanging
    finally:
        os.kill(pid, signal.SIGTERM)


# ---------------------------------------------------------------- retries, bounded (the Notifier itself)


def deliver(tmp_path, url, **kw):
    """Send one ``run_failed`` through a Notifier and wait for its outcome; the log."""
    import sys

    from workflow.agent.notify import Notifier

    n = Notifier(str(tmp_path), [url], ["run_failed"], [sys.executable], backoff=0.05, **kw)
    n.emit("run_failed", "t", "b")
    n.drain(120)
    assert not n.queue.unfinished_tasks
    return (tmp_path / "notify.log").read_text()


def test_a_failed_attempt_is_retried_until_delivered(tmp_path, endpoint):
    port, got = endpoint([500])  # the first attempt gets an error status
    log = deliver(tmp_path, f"json://127.0.0.1:{port}/x")
    assert len(got) == 2
    assert "run_failed: url #1: failed (attempt 1/3, exit 1)" in log and "delivered (attempt 2)" in log


def test_attempts_are_bounded_and_the_url_is_never_logged(tmp_path, silent):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    log = deliver(tmp_path, f"json://127.0.0.1:{closed}/nobody")
    assert log.count("run_failed: url #1: failed") == 3 and "attempt 3/3" in log and "delivered" not in log
    assert str(closed) not in log
    # a URL that never answers: each attempt ends at the timeout, three in all
    log = deliver(tmp_path, f"json://127.0.0.1:{silent}/x", timeout=2)
    assert log.count("no answer within 2s") == 3 and str(silent) not in log
    # not an Apprise URL: no retry
    log = deliver(tmp_path, "nosuchscheme://x")
    assert log.count("not an Apprise URL") == 1


@pytest.mark.ssh
def test_bootstrap_installs_apprise_for_the_watchdog(ssh_pod, project, hook):
    """The pod's python has no Apprise: ``bootstrap`` installs podflow's notify extra's
    into ``_control/notify-venv``, and the watchdog's notification goes out through it."""
    from test_pod_tasks import wf

    port, got = hook
    env = {"WF_NOTIFY_URLS": f"json://127.0.0.1:{port}/hook"}
    ssh_pod.write_config(project, checkout={"require_cuda": False})
    assert wf(project, "remote-exec", "python3 -c 'import apprise'").returncode != 0  # nothing installed by hand
    assert wf(project, "pod-up", env=env).returncode == 0
    r = wf(project, "bootstrap", env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    venv_python = ssh_pod.remote_dir / "outputs" / "_control" / "notify-venv" / "bin" / "python"
    assert subprocess.run(["runuser", "-u", "wftest", "--", str(venv_python), "-c", "import apprise"]).returncode == 0

    marker = ssh_pod.remote_dir / "autostop-ran"
    ssh_pod.write_config(project, checkout={"require_cuda": False},
                         autostop={"idle_minutes": 0.01, "action": "command", "command": f"touch {marker}"})
    r = wf(project, "bootstrap", env=env, timeout=120)  # checks only, and restarts the watchdog
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: marker.exists() and got, 60, "the autostop notification")
    [(path, doc)] = got
    assert path == "/hook" and "autostop: command" in doc["title"] and doc["message"].startswith("idle")
    log = (ssh_pod.remote_dir / "outputs" / "_control" / "notify.log").read_text()
    assert "autostop: url #1: delivered" in log
