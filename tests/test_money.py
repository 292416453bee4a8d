"""Money (SPEC §10): price and spend in pod-status, sweep-status and ``wf cost``, from the
ledger ``.podflow/ledger.jsonl``, against fake Vast, RunPod and Lium APIs whose pods are
real loopback sshds, and against the local provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fakes.common import Timeline
from fakes.harness import CloudProject
from fakes.lium import LiumExecutor
from fakes.runpod import GpuType
from fakes.vast import VastOffer
from workflow.money import ledger
from workflow.money.ledger import PodKey

WF = str(Path(sys.executable).parent / "wf")


def offer(kind, price):
    if kind == "vastai":
        return VastOffer(1, dph_total=price, timeline=Timeline())
    if kind == "runpod":
        return GpuType("NVIDIA GPU 1", "GPU 1", secure_price=price, community_price=None)
    return LiumExecutor(price_per_gpu=price)


@pytest.fixture
def cloud(tmp_path, ssh_client_keys, ssh_session_dir):
    made = []

    def make(kind, price=36.0, **pod):
        cp = CloudProject(kind, tmp_path / f"proj-{len(made)}", ssh_client_keys, ssh_session_dir,
                          [offer(kind, price)], **pod)
        made.append(cp)
        return cp

    yield make
    for cp in made:
        cp.close()


def ok_json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ---------------------------------------------------------------- the ledger itself


def test_ledger_spend_counts_running_intervals_only(tmp_path):
    key = PodKey("vastai", "7001")
    ledger.record(None, "rent", key, price_per_hour=3.6, at=1000.0, root=tmp_path)
    ledger.record(None, "stop", key, at=2000.0, root=tmp_path)  # 1000 s running: $1
    ledger.record(None, "start", key, at=5000.0, root=tmp_path)  # 3000 s stopped: free
    docs = ledger.entries(root=tmp_path)
    [running] = ledger.fold(docs, now=5500.0)
    assert running.state == "running" and running.spent_usd == pytest.approx(1.5)
    assert running.running_since == 5000.0
    # the provider's live price prices the open interval
    [live] = ledger.fold(docs, now=5500.0, live_prices={key: 7.2})
    assert live.spent_usd == pytest.approx(1.0 + 1.0)
    ledger.record(None, "destroy", key, at=6000.0, root=tmp_path)
    [gone] = ledger.fold(ledger.entries(root=tmp_path), now=99999.0)
    assert gone.state == "destroyed" and gone.spent_usd == pytest.approx(2.0) and not gone.alive


def test_ledger_writes_transitions_once_and_skips_a_torn_line(tmp_path):
    key = PodKey("runpod", "pod_x", "p1")
    assert ledger.record(None, "rent", key, price_per_hour=1.0, root=tmp_path)
    assert not ledger.record(None, "start", key, root=tmp_path)  # already running
    assert not ledger.record(None, "adopt", key, root=tmp_path)
    assert ledger.record(None, "stop", key, root=tmp_path)
    assert not ledger.record(None, "stop", key, root=tmp_path)
    path = ledger.path_for(root=tmp_path)
    with open(path, "a") as fh:
        fh.write('{"at": 1, "event": "sto')  # a crash mid-write
    assert [d["event"] for d in ledger.entries(root=tmp_path)] == ["rent", "stop"]
    assert all(d["pod"] == "p1" for d in ledger.entries(root=tmp_path))


# ---------------------------------------------------------------- cloud pods


@pytest.mark.ssh
@pytest.mark.parametrize("kind", ["vastai", "runpod", "lium"])
def test_pod_status_spend_grows_and_cost_keeps_a_destroyed_pod(cloud, kind):
    cp = cloud(kind, price=36.0)  # $0.01 a second: visible growth within a test
    ok_json(cp.wf("pod-up", "--json"))
    first = ok_json(cp.wf("pod-status", "--json"))
    assert first["price_per_hour"] == pytest.approx(36.0)
    assert first["spent_usd"] > 0 and first["uptime_secs"] >= 0
    time.sleep(1.2)
    second = ok_json(cp.wf("pod-status", "--json"))
    assert second["spent_usd"] >= first["spent_usd"] + 0.01
    assert second["uptime_secs"] > first["uptime_secs"]
    r = cp.wf("pod-status")
    assert "price: $36.000/h, spent so far: $" in r.stdout

    assert cp.wf("pod-down", "--destroy", "--force").returncode == 0
    final = ok_json(cp.wf("cost", "--json"))
    [pod] = final["pods"]
    assert pod["state"] == "destroyed" and pod["provider"] == kind and pod["name"] == "p0"
    assert pod["price_per_hour"] == pytest.approx(36.0) and pod["spent_usd"] >= second["spent_usd"]
    time.sleep(0.5)
    later = ok_json(cp.wf("cost", "--json"))
    assert later["pods"][0]["spent_usd"] == pod["spent_usd"]  # a destroyed pod costs no more
    assert later["total_usd"] == pytest.approx(pod["spent_usd"])
    events = [json.loads(line)["event"] for line in (cp.root / ".podflow" / "ledger.jsonl").read_text().splitlines()]
    assert events == ["rent", "destroy"]
    text = cp.wf("cost").stdout
    assert "destroyed" in text and "total: $" in text


@pytest.mark.ssh
def test_pod_destroyed_outside_podflow_is_closed_at_the_next_command(cloud):
    cp = cloud("runpod", price=36.0)
    pod_id = ok_json(cp.wf("pod-up", "--json"))["pod"]["id"]
    before = ok_json(cp.wf("cost", "--json"))
    assert before["pods"][0]["state"] == "running"
    cp.api.pods[pod_id].terminated = True  # terminated in the console
    cp.api.pods[pod_id].fake.destroy()
    after = ok_json(cp.wf("cost", "--json"))
    [pod] = after["pods"]
    assert pod["state"] == "gone" and pod["spent_usd"] >= before["pods"][0]["spent_usd"]
    time.sleep(0.3)
    assert ok_json(cp.wf("cost", "--json"))["pods"][0]["spent_usd"] == pod["spent_usd"]


@pytest.mark.ssh
def test_any_command_that_cannot_reach_a_destroyed_pod_closes_it(cloud):
    """Not only the commands that ask the provider: sweep-status, which only reaches for
    the pod over SSH, asks the provider once the pod does not answer."""
    cp = cloud("runpod", price=36.0)
    pod_id = ok_json(cp.wf("pod-up", "--json"))["pod"]["id"]
    cp.wf("disconnect")
    cp.api.pods[pod_id].terminated = True  # terminated in the console
    cp.api.pods[pod_id].fake.destroy()
    r = cp.wf("sweep-status")
    assert r.returncode == 4, r.stderr
    assert f"runpod API says pod {pod_id} is gone" in r.stderr
    docs = [json.loads(line) for line in (cp.root / ".podflow" / "ledger.jsonl").read_text().splitlines()]
    assert [d["event"] for d in docs] == ["rent", "gone"] and docs[-1]["id"] == pod_id
    [pod] = ok_json(cp.wf("cost", "--json"))["pods"]
    assert pod["state"] == "gone"


@pytest.mark.ssh
def test_a_pool_pod_the_provider_calls_gone_is_closed_when_sweep_wait_asks(cloud, monkeypatch):
    """sweep-wait asks the provider whether a pod that stopped answering is down
    (``balance.provider_says``): the ledger closes it from that answer too."""
    from workflow import pool, runtime
    from workflow.sweep.balance import provider_says

    cp = cloud("vastai", price=36.0)
    pod_id = ok_json(cp.wf("pod-up", "--json"))["pod"]["id"]
    cp.wf("disconnect")
    cp.api.pods[pod_id].fake.destroy()  # destroyed in the console
    for name, value in cp.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cp.root)
    runtime.reset()
    try:
        said = provider_says(pool.pods(runtime.config())[0])
        assert said in ("the provider says it is gone", "the provider says it is terminated"), said
    finally:
        runtime.reset()
    docs = [json.loads(line) for line in (cp.root / ".podflow" / "ledger.jsonl").read_text().splitlines()]
    assert [d["event"] for d in docs] == ["rent", "gone"]


@pytest.mark.ssh
def test_a_stopped_pod_stops_costing(cloud):
    cp = cloud("vastai", price=36.0)
    ok_json(cp.wf("pod-up", "--json"))
    assert cp.wf("pod-down").returncode == 0  # stop: disk kept
    stopped = ok_json(cp.wf("cost", "--json"))["pods"][0]
    assert stopped["state"] == "stopped"
    time.sleep(0.5)
    assert ok_json(cp.wf("cost", "--json"))["pods"][0]["spent_usd"] == stopped["spent_usd"]
    cp.wf("pod-down", "--destroy", "--force")


# ---------------------------------------------------------------- local / ssh: the configured price


def run_wf(project, *args):
    return subprocess.run([WF, *args], cwd=project, env=dict(os.environ), capture_output=True, text=True, timeout=60)


def test_local_pod_uses_the_configured_price(project):
    cfg = {"project": "money", "pod": {"provider": "local", "price_per_hour": 3600.0}}
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump(cfg))
    assert run_wf(project, "pod-up").returncode == 0
    st = ok_json(run_wf(project, "pod-status", "--json"))
    assert st["price_per_hour"] == 3600.0 and st["spent_usd"] > 0  # $1 a second
    time.sleep(0.3)
    assert ok_json(run_wf(project, "pod-status", "--json"))["spent_usd"] >= st["spent_usd"] + 0.3
    doc = ok_json(run_wf(project, "cost", "--json"))
    assert [(p["provider"], p["id"], p["state"]) for p in doc["pods"]] == [("local", "local", "running")]


def test_local_pod_without_a_price_says_null(project):
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump({"project": "money"}))
    st = ok_json(run_wf(project, "pod-status", "--json"))
    assert st["price_per_hour"] is None and st["spent_usd"] is None
    assert "set pod.price_per_hour" in run_wf(project, "pod-status").stdout


# ---------------------------------------------------------------- sweep-status


def test_sweep_cost_spent_so_far_and_estimate_to_finish(project, monkeypatch):
    from workflow.config import load_config
    from workflow.money.spend import sweep_cost
    from workflow.sweep.control import RunState, SweepStatus

    (project / "configs" / "workflow.yaml").write_text(
        yaml.safe_dump({"project": "money", "pod": {"provider": "local", "price_per_hour": 3.6}}))
    cfg = load_config()

    def at(secs):
        import datetime as dt

        return dt.datetime.fromtimestamp(secs, dt.timezone.utc).isoformat().replace("+00:00", "Z")

    runs = (RunState("a", "success", started_at=at(1000), finished_at=at(1100)),
            RunState("b", "running", started_at=at(1100)),
            RunState("c", "pending"), RunState("d", "pending"))
    st = SweepStatus(state="running", counts={}, percent=25.0, runs=runs)
    cost = sweep_cost(cfg, st, now=1200.0)
    assert cost["price_per_hour"] == 3.6 and cost["spent_usd"] == pytest.approx(0.2)  # 200 s at $0.001/s
    assert cost["eta_secs"] == pytest.approx(600.0)  # 1 of 4 done in 200 s: 3 more take 600 s
    assert cost["estimate_to_finish_usd"] == pytest.approx(0.6)
    done = SweepStatus(state="completed", counts={}, percent=100.0,
                       runs=(RunState("a", "success", started_at=at(1000), finished_at=at(1300)),))
    cost = sweep_cost(cfg, done, now=9999.0)
    assert cost["spent_usd"] == pytest.approx(0.3) and cost["eta_secs"] == 0.0


def test_sweep_status_shows_the_sweeps_cost(project):
    from test_sweep_run_helpers import SweepProject

    sp = SweepProject(project, {"pod": {"provider": "local", "price_per_hour": 3600.0}},
                      """\
                      run_id,config,seed,overrides,notes
                      a,configs/tiny.json,0,sleep=0.2,
                      b,configs/tiny.json,1,sleep=0.2,
                      """)
    sp.wf("sweep-start", check=0)
    sp.wf("sweep-wait", "--timeout-secs", "120", check=0)
    doc = json.loads(sp.wf("sweep-status", "--json", check=0).stdout)
    cost = doc["cost"]
    assert cost["price_per_hour"] == 3600.0 and cost["elapsed_secs"] > 0.3
    assert cost["spent_usd"] == pytest.approx(cost["elapsed_secs"], abs=0.1)  # $1 a second
    assert cost["eta_secs"] == 0.0 and cost["estimate_to_finish_usd"] == 0.0
    assert "cost: $" in sp.wf("sweep-status", check=0).stdout
