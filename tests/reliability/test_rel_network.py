"""Network faults: the pod host in a network namespace, the link cut for real
(``ip link set <veth> down``) while a command runs.

Each scenario checks what a user sees: the command fails with exit 4 (SPEC §3) in
bounded time (the connect timeout plus a margin, never TCP's 15 minutes), the pod's
work goes on while the link is down, and the first command after the link returns
reports the truth.

``sweep-start`` under a cut link is not covered here yet: the sweep runner is not in
the tree (see tests/reliability/FIGURES.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

from relhelpers import has_traceback, wait_until, wf_inproc
from figures import record

pytestmark = pytest.mark.ssh

CONNECT_TIMEOUT = 3
#: dead_link_secs(3) = 5 s of unacknowledged data + a keepalive every 5 s + slack.
BOUND_SECS = CONNECT_TIMEOUT + 5 + 5 + 5


def _status(pod, task_id):
    return json.loads((pod.remote_dir / "outputs" / "_tasks" / task_id / "status.json").read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture
def npod(netns_pod, project):
    netns_pod.write_config(project, pod__connect_timeout_secs=CONNECT_TIMEOUT)
    r = wf_inproc("check-connection")
    assert r.code == 0, r.text
    return netns_pod


def test_link_cut_during_task_wait(npod):
    r = wf_inproc("task-run", "--id", "longjob", "--cmd", "sleep 6; echo finished-after-the-cut")
    assert r.code == 0, r.text
    threading.Timer(1.0, npod.cut).start()
    r = wf_inproc("task-wait", "--id", "longjob")
    assert r.code == 4, r.text
    assert r.secs <= 1.0 + BOUND_SECS, f"task-wait took {r.secs:.1f}s after a cut link"
    assert "lost" in r.err and not has_traceback(r.text)
    # the pod's work went on: the command is alive, or already done successfully
    st = _status(npod, "longjob")
    assert st["state"] in ("running", "success")
    if st["state"] == "running":
        assert _alive(st["pid"])
    # while the link is down any command fails fast with 4
    r = wf_inproc("task-status", "--id", "longjob")
    assert r.code == 4 and r.secs <= CONNECT_TIMEOUT + 3, r.text
    npod.restore()
    r = wf_inproc("task-wait", "--id", "longjob", "--json")
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert doc["state"] == "success" and doc["exit_code"] == 0
    assert "finished-after-the-cut" in doc["log_tail"]
    record("faults", "link cut during task-wait", survived=True)


def test_link_cut_while_connecting_and_idle(npod):
    npod.cut()
    for argv in (("check-connection",), ("task-list",), ("fsm-status",)):
        r = wf_inproc(*argv)
        assert r.code == 4, (argv, r.text)
        assert r.secs <= CONNECT_TIMEOUT + 3, (argv, r.secs)
        assert not has_traceback(r.text)
    npod.restore()
    assert wf_inproc("task-list").code == 0
    record("faults", "link down at connect (check-connection, task-list, fsm-status)", survived=True, count=3)


def _tbf(pod, on: bool) -> None:
    if on:
        subprocess.run(["tc", "qdisc", "add", "dev", pod.veth, "root", "tbf", "rate", "4mbit", "burst", "32kbit",
                        "latency", "400ms"], check=True, capture_output=True)
    else:
        subprocess.run(["tc", "qdisc", "del", "dev", pod.veth, "root"], capture_output=True)


def test_link_cut_during_fetch_run(npod, project):
    # a finished run dir on the pod: status + summary + a 4 MB file (a few seconds at 4 mbit/s)
    run = npod.remote_dir / "outputs" / "r1"
    blob = os.urandom(4 << 20)
    r = npod.run_as_user(["python3", "-c", f"""
import json, os, sys
d = {str(run)!r}
os.makedirs(d)
open(os.path.join(d, 'weights.bin'), 'wb').write(sys.stdin.buffer.read())
for name, doc in (('status.json', {{'id': 'r1', 'state': 'success', 'exit_code': 0, 'created_at': '2024-01-01T00:00:00Z',
                  'started_at': '2024-01-01T00:00:00Z', 'finished_at': '2024-01-01T00:00:10Z', 'attempt': 1}}),
                  ('summary.json', {{'ok': True, 'exit_code': 0, 'duration_secs': 10}})):
    json.dump(doc, open(os.path.join(d, name), 'w'))
"""], input=None)
    assert r.returncode == 0, r.stderr
    (run / "weights.bin").write_bytes(blob)
    os.chown(run / "weights.bin", npod.uid, npod.gid)
    _tbf(npod, True)
    try:
        partial = project / "artifacts" / "r1"

        def cut_when_transferring():
            wait_until(lambda: any(project.rglob("*weights.bin*")) or time.sleep(0.02), timeout=20,
                       what="rsync to start")
            npod.cut()

        t = threading.Thread(target=cut_when_transferring, daemon=True)
        t.start()
        r = wf_inproc("fetch-run", "r1")
        t.join(25)
        assert r.code == 4, r.text
        assert r.secs <= 8 + BOUND_SECS, f"fetch-run took {r.secs:.1f}s with the link cut"
        assert not has_traceback(r.text)
    finally:
        _tbf(npod, False)
    npod.restore()
    # the next fetch completes and the copy is exact
    r = wf_inproc("fetch-run", "r1", "--json")
    assert r.code == 0, r.text
    assert hashlib.sha256((partial / "weights.bin").read_bytes()).digest() == hashlib.sha256(blob).digest()
    assert json.loads((partial / "status.json").read_text())["state"] == "success"
    record("faults", "link cut during fetch-run (rsync mid-transfer)", survived=True)
