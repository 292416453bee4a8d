"""pod-up / pod-status / pod-down end to end through the real ``wf`` CLI, against fake
Vast, RunPod and Lium APIs whose pods are real loopback sshds with staged readiness."""

from __future__ import annotations

import json
import subprocess

import pytest

from fakes.common import Timeline
from fakes.harness import SECRET, CloudProject
from fakes.lium import LiumExecutor
from fakes.runpod import GpuType
from fakes.vast import VastOffer

pytestmark = pytest.mark.ssh


def items(kind, specs):
    """Offers for ``kind`` from (price, snatched, timeline) triples, cheapest first."""
    out = []
    for i, (price, snatched, tl) in enumerate(specs, start=1):
        tl = tl or Timeline()
        if kind == "vastai":
            out.append(VastOffer(i, dph_total=price, snatched=snatched, timeline=tl))
        elif kind == "runpod":
            out.append(GpuType(f"NVIDIA GPU {i}", f"GPU {i}", secure_price=price, community_price=None,
                               snatched=snatched, timeline=tl))
        else:
            out.append(LiumExecutor(price_per_gpu=price, snatched=snatched, timeline=tl))
    return out


@pytest.fixture
def cloud(tmp_path, ssh_client_keys, ssh_session_dir):
    made = []

    def make(kind, specs, **pod):
        cp = CloudProject(kind, tmp_path / f"proj-{len(made)}", ssh_client_keys, ssh_session_dir, items(kind, specs), **pod)
        made.append(cp)
        return cp

    yield make
    for cp in made:
        cp.close()


@pytest.mark.parametrize("kind", ["vastai", "runpod", "lium"])
def test_up_check_down_end_to_end(cloud, kind):
    """A snatched cheapest offer is skipped; the pod says running before its port opens and
    opens before the key works; pod-up waits through it; check-connection works; destroy."""
    cp = cloud(kind, [(0.10, True, None), (0.30, False, Timeline(running=0.1, port=0.4, auth=0.8))])
    r = cp.wf("pod-up", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "POD_READY"
    assert [s["stage"] for s in doc["stages"]] == ["api", "tcp", "auth", "command"]
    assert len(doc["skipped"]) == 1 and doc["skipped"][0]["reason"]
    assert "skipped offer" in r.stderr
    assert doc["pod"]["price_per_hour"] == pytest.approx(0.30)
    session = json.loads((cp.root / ".podflow" / "session.json").read_text())
    assert session["pod_id"] == doc["pod"]["id"] and session["created_by_podflow"]
    assert SECRET[kind] not in json.dumps(session) and SECRET[kind] not in r.stdout + r.stderr

    r = cp.wf("check-connection", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["user"] == "wftest"

    r = cp.wf("pod-status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["pod"]["state"] == "running" and st["fsm_state"] == "POD_READY"
    assert st["price_per_hour"] == pytest.approx(0.30) and st["cost_so_far"] is not None

    r = cp.wf("pod-down", "--destroy")
    assert r.returncode == 0, r.stderr
    assert cp.live_pods() == []
    assert not (cp.root / ".podflow" / "session.json").exists()


@pytest.mark.parametrize("kind", ["vastai", "runpod", "lium"])
def test_never_ready_pod_is_destroyed_and_next_offer_used(cloud, kind):
    cp = cloud(kind, [(0.10, False, Timeline(running=0.05, port=0.1, auth=None)), (0.20, False, None)],
               ready_timeout_secs=2)
    r = cp.wf("pod-up", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "never usable" in doc["skipped"][0]["reason"]
    assert doc["pod"]["price_per_hour"] == pytest.approx(0.20)
    live = cp.live_pods()
    assert len(live) == 1 and str(getattr(live[0], "id")) == doc["pod"]["id"]
    cp.wf("pod-down", "--destroy", "--force")


def test_all_offers_fail_exit_4_and_nothing_left_running(cloud):
    cp = cloud("vastai", [(0.1, True, None), (0.2, False, Timeline(port=None, auth=None))], ready_timeout_secs=1.5)
    r = cp.wf("pod-up")
    assert r.returncode == 4, r.stderr
    assert "no pod came up after 2 offer(s)" in r.stderr
    assert cp.live_pods() == []


@pytest.mark.parametrize("kind", ["vastai", "runpod", "lium"])
def test_api_500s_retried_then_exit_4(cloud, kind):
    cp = cloud(kind, [(0.1, False, None)])
    method, path = {"vastai": ("POST", "/api/v0/bundles/"), "runpod": ("GET", "/v2/catalog/gpus"),
                    "lium": ("GET", "/api/executors")}[kind]
    cp.api.fail(method, path, times=None, status=500)
    r = cp.wf("offers")
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr
    # the lium SDK retries reads 3 times itself, so podflow makes 2 attempts of its own
    attempts, calls = (2, 6) if kind == "lium" else (4, 4)
    assert f"failed after {attempts} attempts" in r.stderr
    assert cp.api.count(method, path) == calls


def test_api_500_once_is_retried_transparently(cloud):
    cp = cloud("runpod", [(0.1, False, None)])
    cp.api.fail("GET", "/v2/catalog/gpus", times=2, status=503)
    r = cp.wf("offers", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["offers"]) == 1


def test_unfetched_runs_block_destroy_without_force(cloud):
    cp = cloud("vastai", [(0.1, False, None)])
    assert cp.wf("pod-up").returncode == 0
    outputs = cp.remote / "outputs"
    for run in ("r1", "r2"):
        subprocess.run(["runuser", "-u", "wftest", "--", "sh", "-c",
                        f"mkdir -p {outputs}/{run} && echo '{{}}' > {outputs}/{run}/status.json"], check=True)
    r = cp.wf("pod-down", "--destroy")
    assert r.returncode == 3, r.stderr
    assert "r1, r2" in r.stderr and "--force" in r.stderr
    assert len(cp.live_pods()) == 1

    # the fetch engineer records fetched runs; r1 fetched -> only r2 blocks
    from workflow import session

    session.record_fetched("r1", root=cp.root, dest="artifacts/r1")
    r = cp.wf("pod-down", "--destroy")
    assert r.returncode == 3 and "r2" in r.stderr and "r1" not in r.stderr.split("fetched:")[-1]
    session.record_fetched("r2", root=cp.root, dest="artifacts/r2")
    r = cp.wf("pod-down", "--destroy")
    assert r.returncode == 0, r.stderr
    assert cp.live_pods() == []


def test_force_destroys_despite_unfetched_runs(cloud):
    cp = cloud("runpod", [(0.1, False, None)])
    assert cp.wf("pod-up").returncode == 0
    subprocess.run(["runuser", "-u", "wftest", "--", "sh", "-c",
                    f"mkdir -p {cp.remote}/outputs/r1 && echo '{{}}' > {cp.remote}/outputs/r1/summary.json"], check=True)
    r = cp.wf("pod-down", "--destroy", "--force")
    assert r.returncode == 0, r.stderr
    assert cp.live_pods() == []


def test_vast_stop_then_pod_up_starts_it_again(cloud):
    cp = cloud("vastai", [(0.1, False, None)])
    assert cp.wf("pod-up").returncode == 0
    r = cp.wf("pod-down")
    assert r.returncode == 0 and "stopped" in r.stdout
    st = json.loads(cp.wf("pod-status", "--json").stdout)
    assert st["pod"]["state"] == "stopped"
    r = cp.wf("pod-down", "--destroy")  # stopped: cannot look for unfetched runs
    assert r.returncode == 4 and "--force" in r.stderr
    r = cp.wf("pod-up")  # the session's stopped pod is started, not a new one rented
    # the state file on the pod says POD_READY already: pod-up is refused from there (exit 3)
    assert r.returncode == 3, r.stderr
    assert len(cp.live_pods()) == 1
    assert json.loads(cp.wf("pod-status", "--json").stdout)["pod"]["state"] == "running"
    assert cp.wf("pod-down", "--destroy", "--force").returncode == 0


def test_lium_says_it_can_only_destroy(cloud):
    cp = cloud("lium", [(0.2, False, None)])
    assert cp.wf("pod-up").returncode == 0
    r = cp.wf("pod-down")
    assert r.returncode == 2
    assert "lium" in r.stderr and "stop" in r.stderr and "only destroyed" in r.stderr
    assert cp.wf("pod-down", "--destroy").returncode == 0


def test_pod_target_uses_existing_pod(cloud):
    cp = cloud("runpod", [(0.1, False, None)])
    assert cp.wf("pod-up").returncode == 0
    pod_id = json.loads((cp.root / ".podflow" / "session.json").read_text())["pod_id"]
    (cp.root / ".podflow" / "session.json").unlink()
    cp.write_config(target=pod_id)  # no session: found through pod.target
    assert cp.wf("fsm-reset", "INIT", "--reason", "test").returncode == 0
    posts = cp.api.count("POST", r"^/v2/pods$")
    r = cp.wf("pod-up", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pod"]["id"] == pod_id and not json.loads(r.stdout)["rented"]
    assert cp.api.count("POST", r"^/v2/pods$") == posts
    assert cp.wf("pod-down", "--destroy", "--force").returncode == 0


def test_ttl_recorded_and_shown(cloud):
    cp = cloud("vastai", [(0.1, False, None)], ttl="2h")
    assert cp.wf("pod-up").returncode == 0
    st = json.loads(cp.wf("pod-status", "--json").stdout)
    assert st["ttl"] == "2h" and 7000 < st["ttl_left_secs"] <= 7200
    assert "ttl: 2h" in cp.wf("pod-status").stdout
    cp.wf("pod-down", "--destroy", "--force")


def test_missing_api_key_is_a_config_error(cloud):
    cp = cloud("vastai", [(0.1, False, None)])
    r = cp.wf("offers", env={"VAST_API_KEY": ""})
    assert r.returncode == 2 and "VAST_API_KEY" in r.stderr
