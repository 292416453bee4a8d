"""The persisted state machine: transitions on the pod, refusals, concurrency, corruption."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.agent_client import AgentClient
from workflow.errors import CorruptRemoteFile, TransitionRefused
from workflow.fsm import Fsm
from workflow.transport.local import LocalTransport

WF = str(Path(sys.executable).with_name("wf"))


def make_fsm(outputs: Path, enforce: bool = True) -> Fsm:
    return Fsm(AgentClient(LocalTransport(), str(outputs)), enforce=enforce)


def state_file(outputs: Path) -> Path:
    return outputs / "_control" / "workflow_state.json"


def test_missing_state_file_reads_as_init(tmp_path):
    assert make_fsm(tmp_path).status()["state"] == "INIT"
    assert not state_file(tmp_path).exists()  # a read never writes


def test_happy_path_is_persisted_with_history(tmp_path):
    fsm = make_fsm(tmp_path)
    for command in ("pod-up", "bootstrap", "checkout", "sweep-start", "sweep-finished"):
        seen = fsm.check(command)
        fsm.advance(command, seen)
    doc = json.loads(state_file(tmp_path).read_text())
    assert doc["state"] == "SWEEP_COMPLETED"
    assert [h["from"] for h in doc["history"]][0] == "INIT"
    assert [(h["to"], h["trigger"]) for h in doc["history"]] == [
        ("POD_READY", "pod-up"), ("BOOTSTRAPPED", "bootstrap"), ("CHECKED_OUT", "checkout"),
        ("SWEEP_RUNNING", "sweep-start"), ("SWEEP_COMPLETED", "sweep-finished")]
    assert all(h["at"].endswith("Z") and h["by"] for h in doc["history"])


def test_refusal_names_current_and_allowed_states(tmp_path):
    fsm = make_fsm(tmp_path)
    with pytest.raises(TransitionRefused) as err:
        fsm.check("checkout")
    assert err.value.current == "INIT"
    assert err.value.allowed == ["BOOTSTRAPPED", "CHECKED_OUT", "SWEEP_COMPLETED"]
    assert int(err.value.exit_code) == 3
    assert not state_file(tmp_path).exists()


def test_not_enforced_warns_and_proceeds(tmp_path):
    warnings = []
    fsm = Fsm(AgentClient(LocalTransport(), str(tmp_path)), enforce=False, warn=warnings.append)
    seen = fsm.check("checkout")
    fsm.advance("checkout", seen)
    assert fsm.status()["state"] == "CHECKED_OUT"
    assert warnings and "INIT" in warnings[0]


def test_sweep_start_from_running_needs_dead_runner(tmp_path):
    fsm = make_fsm(tmp_path)
    fsm.reset("SWEEP_RUNNING", "test")
    with pytest.raises(TransitionRefused):
        fsm.check("sweep-start", runner_dead=False)
    assert fsm.check("sweep-start", runner_dead=True) == "SWEEP_RUNNING"


def test_compare_and_set_refuses_a_state_changed_meanwhile(tmp_path):
    a, b = make_fsm(tmp_path), make_fsm(tmp_path)
    seen = a.check("pod-up")
    b.advance("pod-up", b.check("pod-up"))
    with pytest.raises(TransitionRefused):
        a.advance("pod-up", seen)
    assert len(a.status()["history"]) == 1


def test_reset_records_reason(tmp_path):
    fsm = make_fsm(tmp_path)
    fsm.reset("CHECKED_OUT", "pod was prepared by hand")
    last = fsm.status()["history"][-1]
    assert (last["from"], last["to"], last["trigger"], last["reason"]) == (
        "INIT", "CHECKED_OUT", "fsm-reset", "pod was prepared by hand")


def _hammer(outputs: str, worker: int, n: int) -> None:
    fsm = make_fsm(Path(outputs))
    for i in range(n):
        fsm.record(**{f"w{worker}_{i}": i})
        fsm.reset("CHECKED_OUT" if i % 2 else "BOOTSTRAPPED", f"w{worker}-{i}")


def test_concurrent_writers_lose_nothing(tmp_path):
    workers, n = 4, 15
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    doc = json.loads(state_file(tmp_path).read_text())
    reasons = {h["reason"] for h in doc["history"]}
    assert reasons == {f"w{w}-{i}" for w in range(workers) for i in range(n)}
    assert all(f"w{w}_{i}" in doc for w in range(workers) for i in range(n))
    # the chain is unbroken: each entry starts where the previous one ended
    for prev, cur in zip(doc["history"], doc["history"][1:]):
        assert cur["from"] == prev["to"]
    assert not list(state_file(tmp_path).parent.glob("*.tmp"))


def test_corrupt_state_file_is_reported_and_left_alone(tmp_path):
    path = state_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"state": "CHECKED_OUT", "hist')
    fsm = make_fsm(tmp_path)
    with pytest.raises(CorruptRemoteFile):
        fsm.status()
    with pytest.raises(CorruptRemoteFile):
        fsm.reset("INIT", "x")
    assert path.read_text() == '{"state": "CHECKED_OUT", "hist'


def _wf(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=60)


def test_cli_status_reset_and_json(project):
    res = _wf(project, "fsm-reset", "bootstrapped", "--reason", "by hand")
    assert res.returncode == 0, res.stderr
    res = _wf(project, "fsm-status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "BOOTSTRAPPED" and doc["history"][0]["from"] == "INIT"
    assert {"state", "updated_at", "history"} <= set(doc)


def test_cli_bad_state_is_exit_2_without_traceback(project):
    res = _wf(project, "fsm-reset", "NOPE")
    assert res.returncode == 2
    assert "unknown state" in res.stderr and "Traceback" not in res.stderr


def test_cli_corrupt_state_file_is_exit_1_without_traceback(project):
    path = project / ".podflow" / "local-pod" / "outputs" / "_control" / "workflow_state.json"
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2")
    res = _wf(project, "fsm-status")
    assert res.returncode == 1
    assert "not valid JSON" in res.stderr and "Traceback" not in res.stderr
    assert path.read_text() == "[1, 2"


def test_cli_json_failure_is_still_one_json_document(project):
    path = project / ".podflow" / "local-pod" / "outputs" / "_control" / "workflow_state.json"
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2")
    res = _wf(project, "fsm-status", "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 1 and doc["error"]["type"] == "CorruptRemoteFile"
    assert "not valid JSON" in doc["error"]["message"]
