"""Multi-node runs between two hosts of their own (SPEC §9): each pod a network namespace
with its own sshd and unix user (podflow reaches them over SSH through their veth to
this namespace), and the two joined by a private link of their own, as a cluster's
interconnect: ``pod.hosts[].addr`` is the pod's address on that link, so the
rendezvous and gloo go over it (``GLOO_SOCKET_IFNAME`` = the link's interface). With the
link down, the pods cannot reach each other and sweep-start refuses before launching.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from netns import NetnsPod, _ip, netns_available

REPO = Path(__file__).resolve().parents[2]
TORCH_VENV = (REPO / ".venv-torch").resolve()
WF = str(Path(sys.executable).with_name("wf"))

pytestmark = pytest.mark.xdist_group("wfmn")  # users wfmn0/1


class MnPod(NetnsPod):
    """A ``NetnsPod`` logging in its own user (two pods share the file system)."""

    ns_prefix = "mn"


def _usable_by(user: str) -> bool:
    probe = subprocess.run(["su", user, "-s", "/bin/sh", "-c", f"cd / && {TORCH_VENV}/bin/python -c 'import torch'"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def linked_pods(ssh_client_keys, ssh_session_dir):
    """Two namespaced pods (users wfmn0, wfmn1) and a veth link between the namespaces."""
    if not netns_available():
        pytest.skip("needs root, iproute2 with netns, /usr/sbin/sshd")
    pods = []
    try:
        for i in range(2):
            pods.append(MnPod(ssh_client_keys, ssh_session_dir, user=f"wfmn{i}").start())
        if not _usable_by(pods[0].user):
            pytest.skip(f"{TORCH_VENV} cannot be read by another user here")
        tag = os.urandom(3).hex()
        link = (f"mn{tag}a", f"mn{tag}b")
        third = int(pods[0].host.split(".")[2])
        subnet = f"10.78.{third}"
        _ip("link", "add", link[0], "type", "veth", "peer", "name", link[1])
        for i, pod in enumerate(pods):
            _ip("link", "set", link[i], "netns", pod.ns)
            _ip("-n", pod.ns, "addr", "add", f"{subnet}.{i + 1}/24", "dev", link[i])
            _ip("-n", pod.ns, "link", "set", link[i], "up")
            pod.link, pod.addr = link[i], f"{subnet}.{i + 1}"
        yield pods
    finally:
        for pod in pods:
            pod.cleanup()


def _checkout(pod, tag):
    """What bootstrap + checkout leave: examples/ and a venv with torch."""
    repo = pod.home / f"wfmn-{tag}" / "repo"
    shutil.copytree(REPO / "examples", repo / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
    (repo / ".venv").symlink_to(TORCH_VENV)
    subprocess.run(["chown", "-R", f"{pod.uid}:{pod.gid}", str(pod.home / f"wfmn-{tag}")], check=True)


def wf(project, *args, check=None):
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check is not None:
        assert proc.returncode == check, f"wf {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_two_hosts_train_over_their_link_and_a_cut_link_is_refused(linked_pods, project):
    pods = linked_pods
    tag = os.urandom(3).hex()
    for pod in pods:
        _checkout(pod, tag)
    (project / "sweeps").mkdir()
    (project / "sweeps" / "s.csv").write_text("run_id,config,seed,overrides,notes,nodes\n"
                                               "mn,configs/tiny.json,0,steps=4 log_every=1,,2\n")
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump({
        "project": f"mn{tag}",
        "pod": {"provider": "ssh", "identity_file": str(pods[0].key_path), "known_hosts": ".podflow/known_hosts",
                "connect_timeout_secs": 5,
                "hosts": [{"host": p.host, "port": p.port, "user": p.user, "addr": p.addr} for p in pods]},
        "remote": {"workdir": f"~/wfmn-{tag}/repo", "outputs_dir": f"~/wfmn-{tag}/outputs",
                   "data_dir": f"~/wfmn-{tag}/data"},
        "checkout": {"require_cuda": False},
        "sweep": {"csv": "sweeps/s.csv", "workdir": "examples", "entrypoint": "train.py", "nproc_per_node": 1},
    }))
    wf(project, "fsm-reset", "CHECKED_OUT", "--reason", "checkout made by the test", check=0)
    dry = wf(project, "sweep-start", "--dry-run", check=0).stdout
    for i, pod in enumerate(pods):  # the interface holding each pod's address, on that pod
        assert f"--rdzv_endpoint={pods[0].addr}:" in dry and f"--local_addr={pod.addr}" in dry
        assert f"GLOO_SOCKET_IFNAME={pod.link}" in dry and f"NCCL_SOCKET_IFNAME={pod.link}" in dry

    _ip("-n", pods[1].ns, "link", "set", pods[1].link, "down")  # the interconnect is cut
    res = wf(project, "sweep-start", check=2)
    assert f"p1 cannot reach node 0 (p0) at {pods[0].addr}:" in res.stderr, res.stderr
    assert not (pods[0].home / f"wfmn-{tag}" / "outputs" / "mn").exists()  # nothing was launched

    _ip("-n", pods[1].ns, "link", "set", pods[1].link, "up")
    wf(project, "sweep-start", check=0)
    wf(project, "sweep-wait", "--timeout-secs", "180", check=0)
    out0 = pods[0].home / f"wfmn-{tag}" / "outputs" / "mn"
    first = json.loads((out0 / "metrics.jsonl").read_text().splitlines()[0])
    assert first["world_size"] == 2
    status1 = json.loads((pods[1].home / f"wfmn-{tag}" / "outputs" / "mn" / "status.json").read_text())
    assert status1["state"] == "success"
    doc = json.loads(wf(project, "sweep-status", "--json", check=0).stdout)
    assert [(n["pod"], n["state"]) for n in doc["runs"][0]["nodes"]] == [("p0", "success"), ("p1", "success")]
