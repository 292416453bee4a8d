"""Pods on one private network (SPEC §9, ``pod.network: cluster``) through the real ``wf``
CLI, against the fake RunPod (instant clusters) and Vast (overlay networks) APIs, whose
pods are real loopback sshds (each its own ``~/w``, as separate machines): rented together,
usable, private addresses, in the ledger, ended together; a down Vast member replaced on
its overlay (RunPod refuses: an instant cluster adds no pod); an overlay whose pods all
ended alone deleted; a failure midway leaves nothing billing; Lium is refused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import pytest

from fakes.common import Timeline
from fakes.harness import CloudProject
from fakes.lium import LiumExecutor
from fakes.runpod import GpuType
from fakes.vast import VastOffer
from gitrepo import git_daemon, git_repo  # noqa: F401 - fixtures
from test_sweep_run_helpers import REPO, TORCH_VENV
from workflow.agent import net

pytestmark = pytest.mark.ssh


@pytest.fixture
def network(tmp_path, ssh_client_keys, ssh_session_dir):
    made = []

    def make(kind, items, **pod):
        cp = CloudProject(kind, tmp_path / f"proj-{len(made)}", ssh_client_keys, ssh_session_dir, items,
                          count=2, network="cluster", **pod)
        made.append(cp)
        sshd = cp.api.make_sshd

        def own_machine():  # each pod its own HOME and ~/w (its sshd's own), as separate machines
            p = sshd()
            mine, seen = p.remote_dir / "w", p.home / "w"  # tasks see the user's passwd home: bind its ~/w
            for d in (mine, seen):
                d.mkdir(exist_ok=True)
                os.chown(d, p.uid, p.gid)
            p._sshd_prefix = lambda: ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                                      'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(mine), str(seen)]
            inject = p.inject_env
            p.inject_env = lambda env: inject({"HOME": str(p.remote_dir), **env})
            p.inject_env({})
            return p

        cp.api.make_sshd = own_machine
        cp.config["remote"] = {"workdir": "~/w/repo", "outputs_dir": "~/w/outputs", "data_dir": "~/w/data"}
        cp.write_config()
        return cp

    yield make
    for cp in made:
        cp.close()


def ok_json(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@contextlib.contextmanager
def _in_project(cp, monkeypatch):
    """This process as ``wf`` in ``cp`` (its directory, its API variables): yields the pods."""
    from workflow import pool, runtime

    monkeypatch.chdir(cp.root)
    for k, v in cp.env.items():
        if k in ("HOME", "NO_PROXY", "no_proxy") or k.startswith(("RUNPOD_", "VAST_")):
            monkeypatch.setenv(k, v)
    runtime.reset()
    try:
        yield pool.pods(runtime.config())
    finally:
        runtime.disconnect()
        runtime.reset()


def _rendezvous_over_the_network(cp, monkeypatch):
    """As a 2-node run starts (in-process, through the pods' agents): each pod's address
    (``multinode.pod_addr``), the interface holding node 0's, and the TCP probe that node 1
    reaches node 0 there (``multinode.probe_rendezvous``). Returns (addrs, iface)."""
    from workflow import runtime
    from workflow.sweep import multinode

    with _in_project(cp, monkeypatch) as pods:
        addrs = []
        for pod in pods:
            with runtime.on_pod(pod):
                addrs.append(multinode.pod_addr(runtime.config(), pod))
        with runtime.on_pod(pods[0]):
            facts = runtime.agent().call("net.facts", timeout=60, addr=addrs[0], ports=1)
        node = multinode.Node(0, tuple(p.name for p in pods), f"{addrs[0]}:{facts['ports'][0]}", "x-1")
        multinode.probe_rendezvous({"x": node}, {p.name: p for p in pods})  # raises when p1 cannot reach it
        return addrs, facts["iface"]


def test_runpod_rents_one_instant_cluster_and_ends_it_whole(network, monkeypatch):
    cp = network("runpod", [GpuType("NVIDIA H100 80GB HBM3", "H100", secure_price=2.0, community_price=None)])
    r = cp.wf("pod-up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert cp.api.count("POST", r"^/v2/clusters$") == 1 and cp.api.count("POST", r"^/v2/pods$") == 0
    (cluster,) = cp.api.clusters.values()
    body = next(b for m, p, b, _ in cp.api.requests if m == "POST" and p == "/v2/clusters")
    assert body["compute"] == {"gpuTypeId": "NVIDIA H100 80GB HBM3", "gpuCountPerPod": 1, "podCount": 2}
    members = cluster["members"]

    status = ok_json(cp.wf("pod-status", "--json"))
    pods = {p["name"]: p for p in status["pods"]}
    assert "network: " + cluster["id"] + ", private address 127.77.1.2" in cp.wf("pod-status", "--pod", "p1").stdout
    for i, pid in enumerate(members):  # p0 is node rank 0; each pod usable, with its private address
        doc = pods[f"p{i}"]
        assert doc["pod"]["id"] == pid and doc["pod"]["cluster_id"] == cluster["id"]
        assert doc["pod"]["private_addr"] == f"127.77.1.{i + 1}"
        assert doc["fsm_state"] == "POD_READY" and doc["price_per_hour"] == 2.0
    assert [p["state"] for p in ok_json(cp.wf("fsm-status", "--json"))["pods"]] == ["POD_READY", "POD_READY"]
    # a 2-node run's addresses are the private ones (NODE_ADDR in each pod), not the SSH host;
    # node 1 reaches node 0 there, and the interface holding it is loopback's here (ens* on RunPod)
    assert _rendezvous_over_the_network(cp, monkeypatch) == (["127.77.1.1", "127.77.1.2"], "lo")
    cost = ok_json(cp.wf("cost", "--json"))
    assert sorted(p["id"] for p in cost["pods"] if p["state"] != "destroyed") == sorted(members)

    assert cp.wf("pod-down").returncode == 2  # a cluster's pods cannot be stopped
    # nor can one be replaced: an instant cluster adds no pod (refused, saying what to do instead)
    r = cp.wf("sweep-recover", "--replace")
    assert r.returncode == 2 and "adds no pod" in r.stderr and "'wf pod-down --destroy', 'wf pod-up'" in r.stderr, \
        r.stdout + r.stderr
    cp.config["pool"] = {"replace": True}
    cp.write_config()
    r = cp.wf("pod-status")
    assert r.returncode == 2 and "pool.replace: a down pod of a runpod private network cannot be replaced" in r.stderr
    del cp.config["pool"]
    cp.write_config()
    r = cp.wf("pod-down", "--destroy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "destroyed runpod pod" in r.stdout and cluster["id"] in r.stdout
    assert cp.api.count("DELETE", r"^/v2/clusters/") == 1 and not cp.api.clusters and not cp.live_pods()
    cost = ok_json(cp.wf("cost", "--json"))
    assert {p["state"] for p in cost["pods"]} == {"destroyed"} and len(cost["pods"]) == 2


def _torch_for(user: str) -> bool:
    """Whether ``user`` (a pod's) can read this machine's CPU torch venv (``.venv-torch``)."""
    found = sorted(TORCH_VENV.glob("lib/python3*/site-packages/torch/__init__.py"))
    return bool(found) and subprocess.run(["runuser", "-u", user, "--", "test", "-r", str(found[0])],
                                          capture_output=True, timeout=60).returncode == 0


def test_two_nodes_train_over_an_instant_clusters_private_addresses(network):
    """A ``nodes: 2`` row on the cluster's two pods: torchrun's c10d rendezvous on node 0's
    private address (NODE_ADDR), gloo on the interface holding it; both nodes' logs fetched."""
    cp = network("runpod", [GpuType("NVIDIA H100 80GB HBM3", "H100", secure_price=2.0, community_price=None)])
    if not _torch_for(cp.config["pod"]["user"]):
        pytest.skip(f"the pod user cannot run {TORCH_VENV} (bash scripts/setup makes it)")
    cp.config["sweep"] = {"csv": "sweeps/sweep.csv", "workdir": "examples", "launcher": "torchrun",
                          "entrypoint": "train.py", "nproc_per_node": 1,
                          "args": ["{config}", "--seed={seed}", "--out_dir={out_dir}"]}
    cp.config["remote"]["env"] = {"OMP_NUM_THREADS": "1"}
    cp.write_config()
    (cp.root / "sweeps").mkdir()
    (cp.root / "sweeps" / "sweep.csv").write_text(
        "run_id,config,seed,overrides,notes,nodes\nmn,configs/tiny.json,0,steps=4 log_every=1,,2\n")
    r = cp.wf("pod-up")
    assert r.returncode == 0, r.stdout + r.stderr
    for pod in cp.live_pods():  # what bootstrap + checkout leave, the venv being this machine's torch
        sshd = pod.fake.sshd
        repo = sshd.remote_dir / "w" / "repo"
        shutil.copytree(REPO / "examples", repo / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
        (repo / ".venv").symlink_to(TORCH_VENV.resolve())
        subprocess.run(["chown", "-R", f"{sshd.uid}:{sshd.gid}", str(repo)], check=True)
    for step in (("fsm-reset", "CHECKED_OUT", "--reason", "checkout made by hand (test)"), ("sweep-start",),
                 ("sweep-wait", "--timeout-secs", "150")):
        r = cp.wf(*step, timeout=200)
        assert r.returncode == 0, r.stdout + r.stderr
    [run] = ok_json(cp.wf("sweep-status", "--json"))["runs"]
    assert [(n["rank"], n["pod"], n["state"]) for n in run["nodes"]] == [(0, "p0", "success"), (1, "p1", "success")]
    assert ok_json(cp.wf("fetch-run", "mn", "--json"))["run_id"] == "mn"
    art = cp.root / "artifacts" / "mn"
    first = json.loads((art / "metrics.jsonl").read_text().splitlines()[0])
    assert first["world_size"] == 2 and first["backend"] == "gloo"
    assert "--rdzv_endpoint=127.77.1.1:" in (art / "command.sh").read_text()  # node 0's private address
    assert (art / "stdout.node1.log").stat().st_size > 0


def test_a_cluster_whose_pods_never_become_usable_is_ended_whole_and_the_next_offer_tried(network):
    never = Timeline(auth=None)  # the key is never authorized: no SSH command ever runs
    cp = network("runpod", [GpuType("NVIDIA A100", "A100", secure_price=1.0, community_price=None, timeline=never),
                            GpuType("NVIDIA H100", "H100", secure_price=2.0, community_price=None)],
                 ready_timeout_secs=3)
    r = cp.wf("pod-up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not all of its pods became usable; trying the next offer" in r.stderr
    first, second = (b["compute"]["gpuTypeId"] for m, p, b, _ in cp.api.requests if (m, p) == ("POST", "/v2/clusters"))
    assert (first, second) == ("NVIDIA A100", "NVIDIA H100")
    (cluster,) = cp.api.clusters.values()  # the first one deleted, with its pods
    assert sorted(p.id for p in cp.live_pods()) == sorted(cluster["members"])
    spent = ok_json(cp.wf("cost", "--json"))["pods"]
    assert sorted(p["state"] for p in spent) == ["destroyed", "destroyed", "running", "running"]


def _vast_offers(bad_second=False):
    return [VastOffer(1, dph_total=0.05),  # cheapest, but on no physical cluster
            VastOffer(2, dph_total=0.06, cluster_id=9),  # a cluster with one offer cannot hold two pods
            VastOffer(3, dph_total=0.40, cluster_id=5),
            VastOffer(4, dph_total=0.50, cluster_id=5, rent_error="invalid_args" if bad_second else None),
            VastOffer(5, dph_total=0.70, cluster_id=5)]  # a spare: what a replacement rents


def test_vast_rents_an_overlay_a_preempted_member_is_replaced_on_it_and_the_overlay_ends_with_its_pods(
        network, monkeypatch, git_repo, git_daemon):
    cp = network("vastai", _vast_offers())
    sha = cp.job_sweep(git_repo, git_daemon, "".join(f"v{i},steps=3 sleep=0.5\n" for i in range(4)),
                       pool={"down_after_secs": 3, "replace": True})
    offers = ok_json(cp.wf("offers", "--json"))["offers"]  # only a physical cluster with 2 offers can
    assert [(o["id"], o["price_per_hour"]) for o in offers] == [("cluster-5", 0.9)]
    r = cp.wf("pod-up")
    assert r.returncode == 0, r.stdout + r.stderr
    (overlay,) = cp.api.overlays.values()
    assert overlay["cluster_id"] == 5
    rented = sorted(p.offer.id for p in cp.live_pods())
    assert rented == [3, 4] and sorted(overlay["instances"]) == sorted(p.id for p in cp.live_pods())
    # inside an overlay each pod's address is its eth0's; these pods share this machine's eth0
    # (an SSH host of its own, loopback, where the machine has none), and reach each other there
    eth0 = net.iface_addr("eth0")
    assert _rendezvous_over_the_network(cp, monkeypatch) == ([eth0 or "127.0.0.1"] * 2, "eth0" if eth0 else "lo")
    with _in_project(cp, monkeypatch) as pods:  # each member's watchdog knows its overlay
        from workflow import runtime
        from workflow.money import watchdog

        with runtime.on_pod(pods[1]):
            assert watchdog.settings(runtime.config(), provider="vastai", pod_id="1",
                                     created_at=None)["overlay"] == overlay["name"]

    # p1 preempted mid-sweep (pool.replace): another ask of physical cluster 5 is rented in its
    # place and joined to the same overlay; the runs finish there and on p0
    for step in ("bootstrap", "checkout", "sweep-start"):
        r = cp.wf(step, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
    old = json.loads((cp.root / ".podflow" / "session-p1.json").read_text())["pod_id"]
    cp.api.pods[old].fake.preempt()
    r = cp.wf("sweep-wait", "--timeout-secs", "150", timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "p1 is down: the provider says it is stopped" in r.stdout, r.stdout
    assert f"renting RTX 4090 x1 at $0.700/h (offer 5) onto network {overlay['name']}" in r.stdout, r.stdout
    assert "p1: replaced, checked out at " + sha[:12] in r.stdout, r.stdout
    new = json.loads((cp.root / ".podflow" / "session-p1.json").read_text())
    assert new["pod_id"] != old and new["cluster"] == overlay["name"] and cp.api.pods[old].fake.destroyed
    assert cp.api.pods[new["pod_id"]].offer.id == 5 and int(new["pod_id"]) in overlay["instances"]
    doc = ok_json(cp.wf("sweep-status", "--json"))
    assert doc["counts"] == {"success": 4} and any(run["attempt"] == 2 for run in doc["runs"]), doc
    assert _rendezvous_over_the_network(cp, monkeypatch)[0] == [eth0 or "127.0.0.1"] * 2  # on the overlay

    # p1 preempted again, and no ask of physical cluster 5 is left: a clear error (exit 4), the
    # dead member destroyed, nothing rented; p0 lives on
    rents = cp.api.count("PUT", r"^/api/v0/asks/")
    cp.api.pods[new["pod_id"]].fake.preempt()
    r = cp.wf("sweep-recover", "--replace")
    assert r.returncode == 4 and f"p1: no offer that can join network {overlay['name']}" in r.stderr, \
        r.stdout + r.stderr
    assert cp.api.count("PUT", r"^/api/v0/asks/") == rents and cp.api.pods[new["pod_id"]].fake.destroyed
    assert [p.offer.id for p in cp.live_pods()] == [3]

    r = cp.wf("pod-down", "--destroy")  # the network ends whole: p0's runs were never fetched
    assert r.returncode == 3 and "p0: refusing to destroy" in r.stderr and "p1:" not in r.stderr, r.stderr
    assert f"on Vast overlay network {overlay['name']}: 'wf pod-down' stops none of its pods alone" in \
        cp.wf("pod-status", "--pod", "p0").stdout

    # its last pod ends alone, as its watchdog ends it (autostop, pod.ttl, budget) with the
    # instance's own key, which cannot delete the overlay: the next pod-status deletes it
    (p0,) = cp.live_pods()
    assert _vast_call(cp, "DELETE", f"/api/v0/instances/{p0.id}/", p0.container_key) == 200
    assert _vast_call(cp, "DELETE", "/api/v0/overlay/", p0.container_key, {"overlay_name": overlay["name"]}) == 401
    r = cp.wf("pod-status")
    assert r.returncode == 0 and f"network {overlay['name']}: every pod of it ended" in r.stderr, r.stdout + r.stderr
    assert not cp.api.overlays and not cp.live_pods()
    assert {p["state"] for p in ok_json(cp.wf("cost", "--json"))["pods"]} == {"destroyed"}


class _NoSshd:
    """A rented instance nobody logs in to (only the API is used here)."""

    port = 0

    def inject_env(self, env):
        pass

    def authorize_key(self, yes=True):
        pass

    def cleanup(self):
        pass


def test_the_last_vast_overlay_member_whose_watchdog_holds_the_account_key_deletes_the_overlay(monkeypatch):
    """The watchdog's API call (``autostop.api_act``): with only the instance's own key it
    ends its instance, the overlay stays (the next pod-status deletes it, above); with the
    account key (``autostop.allow_account_key``) the last member deletes the overlay first."""
    from fakes.harness import SECRET
    from fakes.vast import FakeVast
    from workflow.agent import autostop

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    api = FakeVast(SECRET["vastai"], _NoSshd, [VastOffer(i, cluster_id=5, timeline=Timeline(port=None))
                                                for i in (1, 2, 3)]).start()
    try:
        api.create_overlay({"cluster_id": 5, "name": "ovl"}, {})
        ids = [api.rent({"label": f"m{i}"}, {}, str(i))["new_contract"] for i in (1, 2, 3)]
        for iid in ids:
            api.join_overlay({"name": "ovl", "instance_id": iid}, {})
        cfg = {"provider": "vastai", "api_base": api.url, "overlay": "ovl"}
        own = api.pods[str(ids[0])].container_key
        autostop.api_act(cfg, "destroy", (str(ids[0]), own), "pod")  # others alive, and no key for it anyway
        autostop.api_act(cfg, "destroy", (str(ids[1]), SECRET["vastai"]), "account")  # one other is alive
        assert api.pods[str(ids[0])].fake.destroyed and api.pods[str(ids[1])].fake.destroyed and "ovl" in api.overlays
        autostop.api_act(cfg, "destroy", (str(ids[2]), SECRET["vastai"]), "account")  # the last one
        assert api.pods[str(ids[2])].fake.destroyed and not api.overlays
    finally:
        api.close()


def _vast_call(cp, method, path, key, body=None) -> int:
    """One call to the fake Vast API with ``key``, as a pod's watchdog makes it; the status."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(cp.api.url + path, method=method, headers={"Authorization": f"Bearer {key}"},
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_failure_midway_leaves_nothing_billing(network):
    cp = network("vastai", _vast_offers(bad_second=True))
    r = cp.wf("pod-up")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "invalid_args" in r.stderr
    assert cp.api.count("PUT", r"^/api/v0/asks/3/$") == 1  # the first pod was rented ...
    assert not cp.live_pods() and not cp.api.overlays  # ... and destroyed with the overlay
    cost = ok_json(cp.wf("cost", "--json"))
    assert not [p for p in cost["pods"] if p["state"] != "destroyed"] and not os.path.exists(
        cp.root / ".podflow" / "session.json")
    rp = network("runpod", [GpuType("NVIDIA A100", "A100")])  # created, but its pods cannot be listed
    rp.api.fail("GET", r"^/v2/clusters/[^/]+/pods$", times=None, status=503)
    r = rp.wf("pod-up")
    assert r.returncode == 4 and "503" in r.stderr, r.stdout + r.stderr
    assert rp.api.count("POST", r"^/v2/clusters$") == 1 and not rp.api.clusters and not rp.live_pods()


def test_lium_and_a_watchdog_runpod_cannot_carry_out_are_refused_before_anything_is_rented(network):
    cp = network("lium", [LiumExecutor(price_per_gpu=0.2)])
    r = cp.wf("pod-up")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot rent 'lium' pods on one private network" in r.stderr and "runpod" in r.stderr
    assert not [m for m, *_ in cp.api.requests if m in ("POST", "PUT")] and not cp.live_pods()
    rp = network("runpod", [GpuType("NVIDIA A100", "A100")], ttl="2h")  # its watchdog would stop a member: 409
    r = rp.wf("pod-up")
    assert r.returncode == 2 and "instant cluster" in r.stderr, r.stdout + r.stderr
    assert rp.api.count("POST", r"^/v2/") == 0
