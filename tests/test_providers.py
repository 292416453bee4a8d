"""The provider contract, each client's quirk normalisation, presets, the session file,
and the local/ssh providers behind the same interface."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from workflow.config import load_config
from workflow.errors import ConfigError, ExitCode, UnsupportedAction
from workflow.providers import REGISTRY, current_endpoint, provider_class
from workflow.providers.base import CreateRequest, Offer, OfferSpec, PodState, Provider
from workflow.providers.lium import parse_ssh_cmd
from workflow.providers.presets import offer_spec
from workflow.providers.runpod import RunpodProvider, ssh_endpoints as runpod_endpoints
from workflow.providers.vastai import instance_id_from, raw_state, ssh_endpoints as vast_endpoints, unwrap
from workflow import session as sessions

WF = str(Path(sys.executable).with_name("wf"))


def cfg(project, **data):
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump(data))
    return load_config(cwd=project)


# ---------------------------------------------------------------- registry & contract


def test_registry_is_typed_and_complete():
    assert set(REGISTRY) == {"local", "ssh", "lium", "vastai", "runpod"}
    for name in REGISTRY:
        klass = provider_class(name)
        assert issubclass(klass, Provider) and klass.name == name
        assert all(isinstance(v, PodState) for v in klass.status_map.values())


def test_unknown_provider_suggests():
    with pytest.raises(ConfigError) as e:
        provider_class("vast")
    assert "vastai" in str(e.value)


def test_unsupported_actions_name_provider_and_action(project):
    local = provider_class("local")(cfg(project))
    for action in ("destroy", "stop", "create"):
        fn = getattr(local, action)
        with pytest.raises(UnsupportedAction) as e:
            fn(Offer("local", "x", "", 1, 0.0), CreateRequest(name="n")) if action == "create" else fn("local")
        assert "'local'" in str(e.value) and f"'{action}'" in str(e.value)
        assert e.value.exit_code == ExitCode.BAD_INPUT
    with pytest.raises(UnsupportedAction):
        provider_class("lium")(cfg(project, pod={"provider": "lium"})).stop("p")


def test_missing_sdk_names_the_extra(monkeypatch, project):
    monkeypatch.setitem(sys.modules, "vastai", None)  # a None entry makes every import of it fail
    monkeypatch.setenv("VAST_API_KEY", "k")
    prov = provider_class("vastai")(cfg(project, pod={"provider": "vastai"}))
    with pytest.raises(ConfigError) as e:
        prov.sdk
    assert "pip install 'podflow[vastai]'" in str(e.value)


def test_api_key_only_from_env(monkeypatch, project):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    prov = provider_class("runpod")(cfg(project, pod={"provider": "runpod"}))
    with pytest.raises(ConfigError) as e:
        prov.http
    assert "RUNPOD_API_KEY" in str(e.value)


# ---------------------------------------------------------------- presets & filters


def test_presets_from_seed_004(project):
    spec = offer_spec(cfg(project, pod={"provider": "vastai", "offer": {"preset": "finetune-40g"}}))
    assert (spec.min_gpu_ram_gb, spec.min_reliability, spec.num_gpus, spec.num_gpus_exact) == (40, 0.95, 2, False)
    spec = offer_spec(cfg(project, pod={"provider": "vastai", "offer": {"preset": "inference-24g", "gpu": "4090",
                                                                        "max_price_per_hour": 0.5}}))
    assert (spec.min_gpu_ram_gb, spec.num_gpus, spec.gpu, spec.max_price_per_hour) == (24, 1, "4090", 0.5)
    spec = offer_spec(cfg(project, pod={"provider": "vastai", "offer": {"preset": "api-only"}}))
    assert spec.min_reliability == 0.95 and spec.min_gpu_ram_gb is None


def test_offer_spec_matches():
    o = Offer("vastai", "1", "RTX 4090", 2, 0.8, gpu_ram_gb=24, reliability=0.97, region="California, US")
    assert OfferSpec(gpu="rtx_4090", num_gpus=2).matches(o)[0]
    assert OfferSpec(gpu="RTX4090", num_gpus=2).matches(o)[0]
    assert not OfferSpec(gpu="A100", num_gpus=2).matches(o)[0]
    assert OfferSpec(num_gpus=2, num_gpus_exact=False).matches(o)[0]
    assert not OfferSpec(num_gpus=1).matches(o)[0]
    assert not OfferSpec(num_gpus=2, min_gpu_ram_gb=40).matches(o)[0]
    assert not OfferSpec(num_gpus=2, max_price_per_hour=0.5).matches(o)[0]
    assert OfferSpec(num_gpus=2, regions=("us",)).matches(o)[0]
    assert not OfferSpec(num_gpus=2, regions=("EU",)).matches(o)[0]


# ---------------------------------------------------------------- quirks


def test_vast_quirks():
    assert instance_id_from({"success": True, "new_contract": 42}) == "42"
    assert instance_id_from({"success": True, "instances": {"id": 43}}) == "43"
    assert instance_id_from({"success": True}) is None
    inst = {"id": 1, "cur_state": "running"}
    assert unwrap({"instances": inst}) is inst and unwrap({"instances": [inst]}) is inst and unwrap(inst) is inst
    assert raw_state({"actual_status": "loading", "cur_state": "running"}) == "loading"
    assert raw_state({"cur_state": "running"}) == "running"
    assert raw_state({"status": "exited"}) == "exited"
    eps = vast_endpoints({"public_ipaddr": "1.2.3.4", "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}]},
                          "ssh_host": "ssh2.vast.ai", "ssh_port": 20022})
    assert [(e.host, e.port) for e in eps] == [("1.2.3.4", 41022), ("ssh2.vast.ai", 20022)]
    assert provider_class("vastai").default_user == "root"


def test_runpod_endpoints():
    assert runpod_endpoints({"runtime": None, "ssh": {"proxy": None, "direct": None}}) == []
    # only the proxy: it carries a shell only, not usable
    assert runpod_endpoints({"runtime": {"ports": []}, "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22,
                                                                           "username": "x"}, "direct": None}}) == []
    eps = runpod_endpoints({"ssh": {"direct": {"host": "45.1.2.3", "port": 40022, "username": "root"}}})
    assert [(e.host, e.port, e.user) for e in eps] == [("45.1.2.3", 40022, "root")]
    # older runtime.ports shape: only the isIpPublic mapping of port 22
    rt = {"runtime": {"ports": [{"privatePort": 22, "publicPort": 1, "ip": "10.0.0.2", "isIpPublic": False, "type": "tcp"},
                                {"privatePort": 22, "publicPort": 2, "ip": "45.1.2.3", "isIpPublic": True, "type": "tcp"},
                                {"privatePort": 8888, "publicPort": 3, "ip": "45.1.2.3", "isIpPublic": True, "type": "http"}]}}
    assert [(e.host, e.port) for e in runpod_endpoints(rt)] == [("45.1.2.3", 2)]
    rt2 = {"runtime": {"ports": [{"private": 22, "public": 5, "ip": "10.1.1.1", "type": "tcp"}]}}
    assert runpod_endpoints(rt2) == []


def test_runpod_create_body_is_strict(project):
    prov = RunpodProvider(cfg(project, pod={"provider": "runpod"}))
    body = prov.create_body(Offer("runpod", "NVIDIA GeForce RTX 4090@COMMUNITY", "RTX 4090", 1, 0.3),
                            CreateRequest(name="p-1", public_key="ssh-ed25519 AAAA x", disk_gb=40))
    assert body["ports"] == ["22/tcp"] and body["startSsh"] is True
    assert body["gpu"] == {"id": "NVIDIA GeForce RTX 4090", "count": 1} and body["cloud"] == "COMMUNITY"
    assert body["env"] == {"PUBLIC_KEY": "ssh-ed25519 AAAA x"} and body["image"]
    from fakes.runpod import CREATE_FIELDS

    assert set(body) <= CREATE_FIELDS
    pod = prov._info({"id": "x", "status": "EXITED", "mounts": {}})
    assert pod.state == PodState.STOPPED and "only be destroyed" in prov.stop_unsupported_reason(pod)
    assert prov.stop_unsupported_reason(prov._info({"id": "y", "status": "RUNNING",
                                                    "mounts": {"persistent": {"size": 20, "path": "/workspace"}}})) is None


@pytest.mark.parametrize("cmd,expect", [
    ("ssh root@1.2.3.4 -p 40022", ("1.2.3.4", 40022, "root")),
    ("ssh -p 2222 -i ~/.ssh/k -o StrictHostKeyChecking=no ubuntu@host.lium.io", ("host.lium.io", 2222, "ubuntu")),
    ("ssh root@5.6.7.8", ("5.6.7.8", 22, "root")),
    ("ssh -p2200 root@9.9.9.9", ("9.9.9.9", 2200, "root")),
])
def test_lium_ssh_connect_cmd(cmd, expect):
    ep = parse_ssh_cmd(cmd)
    assert (ep.host, ep.port, ep.user) == expect
    assert parse_ssh_cmd(None) is None and parse_ssh_cmd("") is None


def test_lium_errors_never_show_key_fragments(monkeypatch, project):
    monkeypatch.setenv("LIUM_API_KEY", "abcdef123456secretwxyz")
    prov = provider_class("lium")(cfg(project, pod={"provider": "lium"}))
    text = prov.describe_error(Exception("Invalid API key (key abcdef…wxyz from env:LIUM_API_KEY) abcdef123456secretwxyz"))
    assert "abcdef" not in text and "wxyz" not in text


# ---------------------------------------------------------------- session file


def test_session_roundtrip_and_record_fetched(project):
    c = cfg(project, pod={"provider": "vastai"})
    assert sessions.load(c) is None
    sessions.save(sessions.Session(provider="vastai", pod_id="7", host="1.2.3.4", port=2222, user="root",
                                   price_per_hour=0.3, ttl="6h"), c)
    assert current_endpoint(c).host == "1.2.3.4" and current_endpoint(c).port == 2222
    sessions.record_fetched("r1", config=c, dest="artifacts/r1", files=3)
    sessions.record_fetched("r2", config=c, complete=False)
    s = sessions.load(c)
    assert set(s.fetched) == {"r1"} and s.fetched["r1"]["files"] == 3 and s.pod_id == "7"
    assert oct((project / ".podflow" / "session.json").stat().st_mode & 0o777) == "0o600"
    assert list((project / ".podflow").glob("*.tmp")) == []


def test_record_fetched_concurrent_writers_lose_nothing(project):
    c = cfg(project)
    threads = [threading.Thread(target=sessions.record_fetched, args=(f"r{i}",), kwargs={"config": c}) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sessions.fetched_runs(c) == {f"r{i}" for i in range(20)}


def test_current_endpoint_without_pod(project):
    from workflow.errors import ConnectionFailed

    with pytest.raises(ConnectionFailed) as e:
        current_endpoint(cfg(project, pod={"provider": "runpod"}))
    assert "pod-up" in str(e.value)


# ---------------------------------------------------------------- local and ssh providers


def _wf(project, *args):
    return subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=60)


def test_local_pod_status_adopts_and_pod_down_refuses(project):
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump({"project": "loc", "pod": {"provider": "local"}}))
    r = _wf(project, "pod-status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["adopted"] and doc["fsm_state"] == "POD_READY" and doc["pod"]["state"] == "running"
    r = _wf(project, "pod-down", "--destroy")
    assert r.returncode == 2 and "'local'" in r.stderr and "destroy" in r.stderr


@pytest.mark.ssh
def test_ssh_provider_pod_up_status_down(ssh_pod, project):
    ssh_pod.write_config(project, checkout={"require_cuda": False})
    r = _wf(project, "pod-status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["adopted"] and doc["fsm_state"] == "POD_READY"
    assert doc["endpoint"].endswith(f"127.0.0.1:{ssh_pod.port}")
    assert _wf(project, "fsm-reset", "INIT", "--reason", "t").returncode == 0
    r = _wf(project, "pod-up", "--json")
    assert r.returncode == 0, r.stderr
    assert [s["stage"] for s in json.loads(r.stdout)["stages"]] == ["api", "tcp", "auth", "command"]
    r = _wf(project, "pod-down")
    assert r.returncode == 2 and "'ssh'" in r.stderr and "'stop'" in r.stderr


@pytest.mark.ssh
def test_ssh_provider_alias_from_ssh_config(ssh_pod, project, isolated_home):
    ssh_dir = isolated_home / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(f"Host gpubox\n  HostName 127.0.0.1\n  Port {ssh_pod.port}\n  User {ssh_pod.user}\n"
                                    f"  IdentityFile {ssh_pod.key_path}\n")
    ssh_pod.write_config(project, pod={"host": "gpubox", "port": None, "user": None, "identity_file": None},
                         checkout={"require_cuda": False})
    c = load_config(cwd=project)
    ep = provider_class("ssh")(c).endpoint()
    assert (ep.host, ep.port, ep.user) == ("127.0.0.1", ssh_pod.port, ssh_pod.user)
    r = subprocess.run([WF, "pod-up", "--json"], cwd=project, capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "HOME": str(isolated_home)})
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- vast quirks end to end


@pytest.mark.ssh
def test_vast_label_lookup_cur_state_and_proxy_fallback(tmp_path, ssh_client_keys, ssh_session_dir):
    from fakes.harness import CloudProject
    from fakes.vast import VastOffer

    offer = VastOffer(5, id_quirk="none", state_quirk="cur_state", direct_broken=True)
    with CloudProject("vastai", tmp_path / "p", ssh_client_keys, ssh_session_dir, [offer]) as cp:
        r = cp.wf("pod-up", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        pod = cp.live_pods()[0]
        assert doc["pod"]["id"] == str(pod.id)  # found by label: the rent answer named no id
        assert doc["endpoint"].endswith(f":{pod.fake.sshd.port}")  # the proxy, after the dead direct port
        assert doc["pod"]["endpoints"][0].endswith(f":{pod.direct_port}")  # direct was tried first
        assert cp.api.count("POST", r"/instances/\d+/ssh/") == 1  # the key was attached
        assert cp.wf("pod-down", "--destroy", "--force").returncode == 0
