"""A pool pod's link cut (SPEC §8): shorter than ``pool.down_after_secs`` nothing moves;
longer, its runs move, and when the link comes back its stale copies never win.

p0 is a loopback sshd pod; p1 an sshd in a network namespace of its own (``netns.py``,
namespace ``wfrecover-*``), users wfrecover0/1. Nothing here asserts a duration.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from netns import NetnsPod, netns_available
from sshd import SshPod
from test_balance import WF, record_of, ssh_sweep_pool, wf

pytestmark = pytest.mark.xdist_group("wfrecover")  # users wfrecover0/1 and their ~/wft, as in test_balance.py


class RecoverNetnsPod(NetnsPod):
    """A netns pod logging in its own user."""

    ns_prefix = "wfrecover"


def wait_until(pred, what: str, log=None, timeout: float = 90.0):
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what}" + (f":\n{log.read_text()}" if log else "")
        time.sleep(0.3)


def p1_states(project):
    doc = json.loads(wf(project, "sweep-status", "--json").stdout)
    return {r["id"]: r["state"] for r in doc["runs"] if r["pod"] == "p1"}


def test_a_short_cut_moves_nothing_a_long_one_moves_runs_and_stale_copies_never_win(
        ssh_client_keys, ssh_session_dir, project, tmp_path):
    if not netns_available():
        pytest.skip("needs root, iproute2 with netns, /usr/sbin/sshd")
    pods = [SshPod(ssh_client_keys, ssh_session_dir, user="wfrecover0"),
            RecoverNetnsPod(ssh_client_keys, ssh_session_dir, user="wfrecover1")]
    with ssh_sweep_pool(pods, project, down_after_secs=6):
        p1 = pods[1]
        (project / "sweeps" / "sweep.csv").write_text(
            "run_id,config,seed,overrides,notes\nhold,configs/tiny.json,0,steps=8 sleep=1,\n"
            + "".join(f"s{i},configs/tiny.json,{i},steps=3 sleep=1,\n" for i in range(3)))
        (project / ".podflow").mkdir(exist_ok=True)  # p0 holds one long run, p1 the rest
        (project / ".podflow" / "pool-sweep.json").write_text(json.dumps(
            {"runs": {"hold": "p0", "s0": "p1", "s1": "p1", "s2": "p1"}}))
        wf(project, "fsm-reset", "CHECKED_OUT", "--reason", "checked out by hand (test)", check=0)
        wf(project, "sweep-start", check=0)
        log = tmp_path / "wait.log"
        with open(log, "w") as out:
            waiter = subprocess.Popen([WF, "sweep-wait", "--timeout-secs", "240"], cwd=project, stdout=out,
                                      stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: p1_states(project).get("s0") == "running", "s0 running on p1")
            p1.cut()  # shorter than down_after_secs
            time.sleep(2)
            p1.restore()
            wait_until(lambda: p1_states(project).get("s0") == "success", "s0 ended on p1")
            assert "is down" not in log.read_text(), log.read_text()
            assert all(a == 1 for a in record_of(project).get("attempts", {}).values())

            p1.cut()  # longer: p1 is down, its unfinished runs go to p0 once p0's own run ended
            moved = wait_until(lambda: [r for r, a in record_of(project).get("attempts", {}).items() if a == 2],
                               "p1's runs re-placed", log)
            time.sleep(1)
            p1.restore()
            assert waiter.wait(timeout=240) == 0, log.read_text()
        finally:
            if waiter.poll() is None:
                waiter.kill()
        text = log.read_text()
        assert text.count("p1 is down: unreachable for") == 1, text
        final = record_of(project)
        assert final["runs"]["s0"] == "p1" and all(final["runs"][r] == "p0" for r in moved), (final, text)
        assert all(final["left"][r] == ["p1"] for r in moved)  # back, p1 is not given them again
        doc = json.loads(wf(project, "sweep-status", "--json", check=0).stdout)
        runs = {r["id"]: r for r in doc["runs"]}
        assert doc["counts"] == {"success": 4}, text
        for r in moved:  # the record's copy (p0, attempt 2) is the run; p1's stale copy is not
            assert (runs[r]["pod"], runs[r]["attempt"]) == ("p0", 2)
        wait_until(lambda: all(json.loads((p1.home / "wft" / "outputs" / r / "status.json").read_text())["state"]
                               not in ("running", "pending")
                               for r in moved if (p1.home / "wft" / "outputs" / r / "status.json").exists()),
                   "p1's stale copies ended")
