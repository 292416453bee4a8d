"""Multi-node runs (SPEC §9): one run over several pods, joined by torchrun's c10d
rendezvous (gloo on the CPU here).

The pods are real, driven by ``wf`` as a user would: loopback sshds, one unix user each,
reached over SSH (the rendezvous on 127.0.0.1), and ``local`` pods where a pod is taken
down or refuses a start. The training is ``examples/train.py`` unchanged, under real
torchrun. Runs are a few steps long.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from sshd import SshPod
from test_sweep_run_helpers import REPO, TORCH_VENV, SweepProject

from workflow.agent.fsutil import parse_time
from workflow.sweep import multinode
from workflow.sweep.plan import RunPlan
from workflow.sweep.pooled import PodOffer, place_nodes


# ---------------------------------------------------------------- the launch, placement, the run's state


def _plan(**kw):
    base = dict(run_id="mn", argv=("torchrun", "--standalone", "--nproc_per_node=2", "train.py", "c.json", "lr=1"),
                env={"WF_RUN_ID": "mn"}, workdir="/w", gpus=0, timeout_secs=None, out_dir="/o/mn",
                config_path="/w/c.json", nodes=2)
    base.update(kw)
    return RunPlan(**base)


def test_node_i_is_launched_as_spec_9_says():
    node = multinode.Node(rank=1, pods=("p0", "p1"), endpoint="10.0.0.1:29511", rdzv_id="mn-3", addr="10.0.0.2",
                          iface="ens1", watch="10.0.0.1:29512")
    p = multinode.as_node(_plan(timeout_secs=60), node, remote_env={"GLOO_SOCKET_IFNAME": "eth9"})
    assert p.argv == ("torchrun", "--nnodes=2", "--node_rank=1", "--nproc_per_node=2", "--rdzv_backend=c10d",
                      "--rdzv_endpoint=10.0.0.1:29511", "--rdzv_id=mn-3", "--local_addr=10.0.0.2",
                      f"--rdzv_conf=is_host=0,read_timeout={multinode.WAIT_SECS},join_timeout={multinode.WAIT_SECS}",
                      "train.py", "c.json", "lr=1")
    # remote.env's own interface wins; the other variable gets the interface holding the address
    assert dict(p.env) == {"WF_RUN_ID": "mn", "WF_NODE_RANK": "1", "WF_NNODES": "2", "NCCL_SOCKET_IFNAME": "ens1",
                           "WF_NODE_WATCH": "10.0.0.1:29512"}
    assert (p.node_rank, p.nodes, p.timeout_secs) == (1, 2, None)  # node 0's clock is the run's
    host = multinode.as_node(_plan(timeout_secs=60), multinode.Node(0, ("p0", "p1"), "10.0.0.1:29511", "mn-3"), {})
    assert "--rdzv_conf=is_host=1," in " ".join(host.argv) and "NCCL_SOCKET_IFNAME" not in host.env
    assert host.timeout_secs == 60


def test_a_multi_node_run_takes_n_pods_and_single_runs_fill_around_it():
    pods = [PodOffer(f"p{i}", 1, {}) for i in range(3)]
    rows = [("a", 1, 1), ("mn", 1, 2), ("b", 1, 1), ("c", 1, 1), ("mn3", 1, 3)]
    placed = place_nodes(rows, pods)
    assert placed["a"] == ("p0",) and placed["mn"] == ("p1", "p2")  # the two least loaded
    assert placed["b"] == ("p0",) and placed["c"] == ("p1",)
    assert placed["mn3"] == ("p0", "p1", "p2")
    again = place_nodes([("mn", 1, 2)], pods, recorded_nodes={"mn": ["p2", "p0"]})
    assert again["mn"] == ("p2", "p0")  # a run keeps the pods it had


@pytest.mark.parametrize("states, want", [
    (["success", "success"], "success"),
    (["success", "failed"], "failed"),
    (["running", "failed"], "failed"),
    (["running", "pending"], "running"),
    (["timed_out", "failed"], "timed_out"),  # the node that ended first (at 10:00) ended it
    (["failed", "lost"], "lost"),  # a lost node has no end time: it is taken for the cause
])
def test_a_runs_state_comes_from_all_its_nodes(states, want):
    nodes = [{"rank": i, "state": s, "finished_at": None if s == "lost" else f"2026-01-01T10:0{i}:00Z"}
             for i, s in enumerate(states)]
    assert multinode.combine(nodes) == want


def test_a_private_network_podflow_cannot_rent_is_refused_with_exit_2(project):
    from workflow import pool
    from workflow.config import load_config
    from workflow.errors import ConfigError

    for provider in ("lium", "local"):
        (project / "configs" / "workflow.yaml").write_text(
            f"pod: {{provider: {provider}, count: 2, network: cluster}}\n")
        with pytest.raises(ConfigError, match=f"cannot rent '{provider}' pods on one private network") as err:
            pool.pods(load_config())
        assert err.value.exit_code == 2
    for provider in ("runpod", "vastai"):  # they can (tests/test_clusters.py), with 2 pods or more
        (project / "configs" / "workflow.yaml").write_text(f"pod: {{provider: {provider}, network: cluster}}\n")
        with pytest.raises(ConfigError, match="needs pod.count of at least 2"):
            pool.pods(load_config())
        (project / "configs" / "workflow.yaml").write_text(f"pod: {{provider: {provider}, count: 2, network: cluster}}\n")
        assert [p.name for p in pool.pods(load_config())] == ["p0", "p1"]


def test_a_pods_private_address_and_the_interface_holding_it(monkeypatch):
    from workflow.agent import net

    monkeypatch.setenv("NODE_ADDR", "10.65.0.3")  # RunPod instant clusters set it in the container
    assert net.private_addr({}) == {"addr": "10.65.0.3", "source": "NODE_ADDR"}
    monkeypatch.delenv("NODE_ADDR")
    if net._container_env("NODE_ADDR") is None:  # PID 1 of this machine has none either
        assert net.private_addr({"network": "cluster", "iface": "lo"})["addr"] == "127.0.0.1"
        assert net.private_addr({})["addr"] is None
    assert net.iface_of("127.0.0.1") == net.iface_of("127.0.0.2") == net.iface_of("localhost") == "lo"
    assert net.iface_of("10.255.255.254") is None  # no interface here holds it: the variables stay unset


# ---------------------------------------------------------------- pods over SSH, for real


#: A multi-node job: all ranks all-reduce ``steps`` times (default 600: ~2 minutes) unless
#: a node leaves (a launch after the first: ``again`` times, default 5); ``fail_node=i``
#: makes node i exit 3 after a few steps.
MNJOB = """\
import os, sys, time
import torch
import torch.distributed as dist
kv = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("--"))
dist.init_process_group("gloo")
print("world_size", dist.get_world_size(), "node", os.environ.get("WF_NODE_RANK", "-"), flush=True)
t = torch.ones(1)
steps = kv.get("steps", 600) if os.environ.get("WF_ATTEMPT", "1") == "1" else kv.get("again", 5)
for step in range(int(steps)):
    dist.all_reduce(t)
    if step == 3 and kv.get("fail_node") == os.environ.get("WF_NODE_RANK", "-"):
        print("node", os.environ.get("WF_NODE_RANK", "-"), "failing on purpose", flush=True)
        sys.exit(3)
    time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def node_users():
    """The SSH pods' unix users: unique to this file and this run (no other test, nor this
    file in another pytest process or xdist worker, shares them: no ``xdist_group``), so
    every process of theirs is this run's; removed with their homes at the end."""
    names = [f"wfmns{os.getpid()}x{i}" for i in range(3)]
    yield names
    for name in names:
        _remove_user(name)


def _remove_user(name):
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for _ in range(20):
        pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _owner(e) == uid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if subprocess.run(["userdel", "-r", name], capture_output=True).returncode in (0, 6):  # 6: no such user
            break
        time.sleep(0.1)
    for left in Path("/tmp").glob("torchelastic_*"):  # torchrun leaves its run dirs behind
        if _owner(left) == uid:
            shutil.rmtree(left, ignore_errors=True)


def _owner(path):
    try:
        return path.stat().st_uid
    except OSError:
        return None


class SshNodes(SweepProject):
    """A project whose pool is loopback sshd pods (one unix user each) reached over SSH by
    ``wf``; each pod has examples/ and ``MNJOB`` checked out, ``.venv`` -> the CPU torch
    venv (no GPU device node here: the placement probe imports no torch)."""

    def __init__(self, root, pods, tag):
        self.root, self.pods, self.tag = root, pods, tag
        self.pod_outputs = [p.home / f"wfmn-{tag}" / "outputs" for p in pods]
        for pod in pods:
            repo = pod.home / f"wfmn-{tag}" / "repo"
            shutil.copytree(REPO / "examples", repo / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
            (repo / "examples" / "mnjob.py").write_text(MNJOB)
            (repo / ".venv").symlink_to(TORCH_VENV.resolve())
            subprocess.run(["chown", "-R", f"{pod.uid}:{pod.gid}", str(repo.parent)], check=True)
        (root / "sweeps").mkdir(exist_ok=True)

    def start(self, csv, count=2, addrs=True, **sweep):
        """The first ``count`` pods as the pool, ``sweep`` over the defaults (MNJOB, one
        process per node), ``csv`` as the sweep; every pod CHECKED_OUT. ``addrs``: each pod
        its ``pod.hosts[].addr`` (else all are reached at 127.0.0.1)."""
        self.outputs_of = self.pod_outputs[:count]
        self.write_config({"project": f"mn{self.tag}",
                           "pod": {"provider": "ssh", "identity_file": str(self.pods[0].key_path),
                                   "known_hosts": ".podflow/known_hosts", "connect_timeout_secs": 10,
                                   # each pod's own loopback address: torch's c10d rendezvous
                                   # ranks the nodes by address (then pid), not by --node_rank
                                   "hosts": [dict({"host": p.host, "port": p.port, "user": p.user},
                                                  **({"addr": f"127.0.0.{i + 1}"} if addrs else {}))
                                             for i, p in enumerate(self.pods[:count])]},
                           "remote": {"workdir": f"~/wfmn-{self.tag}/repo", "outputs_dir": f"~/wfmn-{self.tag}/outputs",
                                      "data_dir": f"~/wfmn-{self.tag}/data", "env": {"OMP_NUM_THREADS": "1"}},
                           "sweep": {"launcher": "torchrun", "entrypoint": "mnjob.py", "nproc_per_node": 1,
                                     "args": ["{config}"], **sweep}})
        self.write_csv(csv)
        self.wf("fsm-reset", "CHECKED_OUT", "--reason", "checkout made by hand (test)", check=0)


@pytest.fixture
def ssh_nodes(project, ssh_client_keys, ssh_session_dir, node_users):
    """Three loopback sshd pods, one user each (``SshNodes``); a test pools 2 or 3."""
    if not (TORCH_VENV / "bin" / "python").exists():
        pytest.skip("needs .venv-torch (bash scripts/setup)")
    pods, tag = [], uuid.uuid4().hex[:8]
    try:
        for user in node_users:
            pods.append(SshPod(ssh_client_keys, ssh_session_dir, user=user).start())
        yield SshNodes(project, pods, tag)
    finally:
        for pod in pods:
            pod.cleanup()
            shutil.rmtree(pod.home / f"wfmn-{tag}", ignore_errors=True)


def test_two_nodes_train_with_world_size_4_and_the_run_is_shown_once(ssh_nodes):
    sp = ssh_nodes
    csv = "run_id,config,seed,overrides,notes,nodes\nmn,configs/tiny.json,0,steps=4 log_every=1,,2\n"
    sweep = dict(entrypoint="train.py", nproc_per_node=2, args=["{config}", "--seed={seed}", "--out_dir={out_dir}"])
    # both pods at one address: which would run torch's rank 0 is chance -> refused before launch
    sp.start(csv, addrs=False, **sweep)
    same = sp.wf("sweep-start", "--dry-run", check=2)
    assert "run mn: p0 and p1 both have address 127.0.0.1" in same.stderr, same.stderr
    sp.start(csv, **sweep)
    dry = sp.wf("sweep-start", "--dry-run", check=0).stdout
    for i in (0, 1):
        assert f"p{i}: line 2: mn  [run]  node {i} of 2" in dry, dry
        assert f"--nnodes=2 --node_rank={i} --nproc_per_node=2 --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:" in dry
        assert "GLOO_SOCKET_IFNAME=lo NCCL_SOCKET_IFNAME=lo " in dry.split(f"p{i}: line 2")[1]
        assert f"WF_NNODES=2 WF_NODE_RANK={i} WF_NODE_WATCH=127.0.0.1:" in dry
    assert not (sp.outputs_of[0] / "mn").exists()

    sp.wf("sweep-start", check=0)
    text = sp.wf("sweep-wait", "--timeout-secs", "150", check=0).stdout
    [line] = [x for x in text.splitlines() if x.startswith("  mn ")]  # the run once, then its nodes
    assert line.split()[:3] == ["mn", "p0", "success"], text
    assert text.splitlines()[text.splitlines().index(line) + 1].split() == [
        "nodes:", "0", "p0", "success", "(0),", "1", "p1", "success", "(0)"], text
    doc = sp.status()
    [run] = doc["runs"]
    assert (run["id"], run["state"], run["pod"]) == ("mn", "success", "p0")
    assert [(n["rank"], n["pod"], n["state"]) for n in run["nodes"]] == [(0, "p0", "success"), (1, "p1", "success")]
    first = json.loads((sp.outputs_of[0] / "mn" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["world_size"] == 4 and first["backend"] == "gloo"  # torch's rank 0 ran on node 0
    for i, (pod, out) in enumerate(zip(sp.pods, sp.outputs_of)):  # each node ran on its own pod, as its user
        status = json.loads((out / "mn" / "status.json").read_text())
        assert status["state"] == "success" and f"--node_rank={i}" in " ".join(status["argv"])
        assert (out / "mn" / "stdout.log").stat().st_uid == pod.uid

    got = json.loads(sp.wf("fetch-run", "mn", "--json", check=0).stdout)
    assert got["run_id"] == "mn"
    art = sp.root / "artifacts" / "mn"
    assert (art / "metrics.jsonl").exists()
    assert (art / "stdout.node1.log").read_text() == (sp.outputs_of[1] / "mn" / "stdout.log").read_text()


def test_a_failing_node_ends_the_other_and_the_run_fails(ssh_nodes):
    sp = ssh_nodes
    sp.start("run_id,config,seed,overrides,notes,nodes\nmn,configs/tiny.json,0,fail_node=1,,2\n",
             max_retries=1)  # a node alone is never retried
    sp.wf("sweep-start", check=0)
    res = sp.wf("sweep-wait", "--timeout-secs", "90")
    assert res.returncode == 1, res.stdout + res.stderr
    [run] = sp.status()["runs"]
    assert run["state"] == "failed" and [n["state"] for n in run["nodes"]] == ["failed", "failed"]
    assert [n["exit_code"] for n in run["nodes"]][1] == 1
    log1 = (sp.outputs_of[1] / "mn" / "stdout.log").read_text()
    assert "node 1 failing on purpose" in log1
    docs = [json.loads((out / "mn" / "status.json").read_text()) for out in sp.outputs_of]
    assert [d["attempt"] for d in docs] == [1, 1]
    # the job would all-reduce for 2 minutes: by the nodes' own records, node 0 ended
    # within 30 s of node 1's failure
    ended = [parse_time(d["finished_at"]) for d in docs]
    assert (ended[0] - ended[1]).total_seconds() <= 30, docs


def test_a_killed_node_makes_the_run_lost_and_nothing_is_left_running(ssh_nodes):
    from test_sweep_run_helpers import marked_pids

    sp = ssh_nodes
    sp.start("run_id,config,seed,overrides,notes,nodes\nmn,configs/tiny.json,0,,,2\n")
    sp.wf("sweep-start", check=0)
    status1 = sp.outputs_of[1] / "mn" / "status.json"
    end = time.monotonic() + 90
    while time.monotonic() < end and "world_size 2" not in _read(sp.outputs_of[1] / "mn" / "stdout.log"):
        time.sleep(0.2)
    nonces = [json.loads((out / "mn" / "status.json").read_text())["nonce"] for out in sp.outputs_of]
    runner1 = json.loads((sp.outputs_of[1] / "_control" / "sweep" / "runner" / "status.json").read_text())
    for pid in [runner1["wrapper_pid"], runner1["pid"]] + marked_pids([nonces[1]]):  # p1's processes die
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    res = sp.wf("sweep-wait", "--timeout-secs", "90")
    assert res.returncode == 1, res.stdout + res.stderr
    [run] = sp.status()["runs"]
    assert run["state"] == "lost", run
    assert [n["state"] for n in run["nodes"]][1] == "lost" and json.loads(status1.read_text())["state"] == "lost"
    status0 = json.loads((sp.outputs_of[0] / "mn" / "status.json").read_text())  # the run's status.json
    assert status0["state"] == "lost" and status0["error"].startswith("node 1 was lost: "), status0
    end = time.monotonic() + 30
    while marked_pids(nonces) and time.monotonic() < end:
        time.sleep(0.1)
    assert not marked_pids(nonces), "a node's processes were left running"


def _read(path):
    try:
        return path.read_text()
    except OSError:
        return ""


def test_multi_node_runs_queued_with_single_runs_on_3_pods_never_deadlock(ssh_nodes):
    sp = ssh_nodes
    rows = [("s1", 1), ("mn", 2), ("s2", 1), ("s3", 1), ("mn2", 2), ("s4", 1)]
    sp.start("run_id,config,seed,overrides,notes,nodes\n"
             + "".join(f"{r},configs/tiny.json,0,steps=5,,{n}\n" for r, n in rows), count=3)
    sp.wf("sweep-start", check=0)
    placed = json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())
    assert placed["nodes"] == {"mn": ["p1", "p2"], "mn2": ["p0", "p2"]}  # each pod's queue: single runs around them
    sp.wf("sweep-wait", "--timeout-secs", "240", check=0)
    doc = sp.status()
    assert [(r["id"], r["state"]) for r in doc["runs"]] == [(r, "success") for r, _ in rows]
    assert doc["counts"] == {"success": 6} and doc["state"] == "completed"


# ---------------------------------------------------------------- local pods: taken down, refusing a start


@pytest.fixture
def two_pods(project):
    """Two ``local`` pods with examples/ checked out (``.venv`` -> the CPU torch venv)."""
    if not (TORCH_VENV / "bin" / "python").exists():
        pytest.skip("needs .venv-torch (bash scripts/setup)")
    sp = SweepProject(project, {"pod": {"provider": "local", "count": 2},
                                "sweep": {"launcher": "torchrun", "entrypoint": "train.py", "nproc_per_node": 2,
                                          "args": ["{config}", "--seed={seed}", "--out_dir={out_dir}"]}},
                      "run_id,config,seed,overrides,notes,nodes\nmn,configs/tiny.json,0,steps=4 log_every=1,,2\n")
    shutil.copytree(sp.repo, sp.pod / "repo-p1", symlinks=True)
    sp.outputs_of = [sp.pod / "outputs", sp.pod / "outputs-p1"]
    for i in range(2):
        _checked_out(sp, i)
    return sp


def _checked_out(sp, i):
    """What a checkout's preflight leaves on pod ``i`` besides the repo: torch's GPU count
    (none here) kept for its venv, so that sweep-start's probe needs no torch import."""
    from workflow.agent.gpus import cache_path, keep_torch_count

    repo = sp.pod / ("repo" if i == 0 else f"repo-p{i}")
    keep_torch_count(str(repo / ".venv" / "bin" / "python"), cache_path(str(sp.outputs_of[i])), [])


def _mnjob(sp, csv, pods=2):
    for i in range(pods):
        repo = sp.pod / ("repo" if i == 0 else f"repo-p{i}")
        if not repo.exists():
            shutil.copytree(sp.repo, repo, symlinks=True)
        (repo / "examples" / "mnjob.py").write_text(MNJOB)
    sp.outputs_of = [sp.pod / "outputs"] + [sp.pod / f"outputs-p{i}" for i in range(1, pods)]
    sp.write_config({"pod": {"provider": "local", "count": pods},
                     "sweep": {"launcher": "torchrun", "entrypoint": "mnjob.py", "nproc_per_node": 1,
                               "args": ["{config}"]}})
    sp.write_csv(csv)
    for i in range(2, pods):  # a pod the fixture did not have: checked out by hand too
        _checked_out(sp, i)
        sp.wf("fsm-reset", "CHECKED_OUT", "--pod", f"p{i}", "--reason", "checkout made by hand (test)", check=0)


# ---------------------------------------------------------------- the nodes' watchdogs, on the pod


def _node_jobs(tmp_path, commands, timeout_secs=None, nnodes=None, first=0, port=None):
    """Each command as node ``first + i`` of one run (its own job dir, launched as the
    sweep runner launches a run: the wrapper with the node's environment, its watch on
    ``port``, else a free one); returns the dirs."""
    from workflow.agent import procs

    port = port or _free_port()
    dirs = []
    for rank, command in enumerate(commands, start=first):
        d = tmp_path / f"node{rank}"
        d.mkdir(parents=True)
        procs.prepare(str(d), "mn", command, timeout_secs=timeout_secs if rank == 0 else None)
        env = procs.job_env({"WF_NODE_RANK": str(rank), "WF_NNODES": str(nnodes or len(commands)),
                             "WF_NODE_WATCH": f"127.0.0.1:{port}"})
        procs.launch(str(d), env=env)
        dirs.append(d)
    return dirs


def _ended(dirs, secs=60.0):
    from test_tasks_helpers import wait_until
    from workflow.agent import procs

    docs = wait_until(lambda: all(procs.is_terminal((procs.refresh_status(str(d)) or {}).get("state")) for d in dirs)
                      and [procs.read_status(str(d)) for d in dirs], secs=secs, step=0.2)
    assert docs, [procs.read_status(str(d)) for d in dirs]
    return docs


def test_the_runs_timeout_is_node_0s_and_every_node_ends_timed_out(tmp_path):
    from test_tasks_helpers import wait_until
    from workflow.agent import node_word

    # node 1 has no deadline of its own: only node 0's clock (2 s) ends it, within seconds
    port = _free_port()
    dirs = _node_jobs(tmp_path, ["sleep 120", "sleep 120"], timeout_secs=2, nnodes=3, port=port)
    docs = _ended(dirs, secs=45)
    assert [d["state"] for d in docs] == ["timed_out", "timed_out"], docs
    assert docs[1]["timeout_secs"] is None and "node 0 ended timed_out" in docs[1]["error"]
    assert wait_until(lambda: node_word.live_pid(str(dirs[0])), secs=15)  # word for node 2, never heard from

    # node 2's pod was busy until now: it starts after node 0's end, is told at once and
    # ends with node 0's state (not after torchrun's 30-minute join timeout)
    [late] = _ended(_node_jobs(tmp_path, ["sleep 120"], nnodes=3, first=2, port=port), secs=30)
    assert (late["state"], late["error"]) == ("timed_out", "node 0 ended timed_out: timed out after 2s"), late
    assert _read(tmp_path / "node0" / "status.json") == json.dumps(docs[0], indent=2, sort_keys=True) + "\n"
    assert multinode.combine([dict(d, rank=i) for i, d in enumerate(docs + [late])]) == "timed_out"
    assert wait_until(lambda: node_word.live_pid(str(dirs[0])) is None, secs=15)  # every node told: it is gone


def test_a_pod_taken_down_ends_node_0s_word_too(tmp_path):
    from test_tasks_helpers import wait_until
    from workflow.agent import halt, node_word, procs

    d = tmp_path / "outputs" / "mn"
    d.mkdir(parents=True)
    doc = procs.prepare(str(d), "mn", "true")
    pid = node_word.leave(str(d), doc["nonce"], "127.0.0.1", _free_port(), [1], "failed", "node 2 ended failed")
    assert pid and wait_until(lambda: node_word.live_pid(str(d)) == pid, secs=15)
    assert halt.end_pod_processes(str(tmp_path / "outputs")) == 1  # the pod died: nothing answers there
    assert wait_until(lambda: node_word.live_pid(str(d)) is None, secs=15)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_node_that_fails_ends_the_others_on_the_pods_themselves(tmp_path):
    # node 2 fails at once (as a node whose start failed); nobody watches from a laptop
    docs = _ended(_node_jobs(tmp_path, ["sleep 120", "sleep 120", "sleep 1; exit 3"]), secs=45)
    assert [d["state"] for d in docs] == ["failed", "failed", "failed"], docs
    assert docs[0]["error"] == "node 2 ended failed" and "node 0 ended failed: node 2" in docs[1]["error"]


def test_a_frozen_or_killed_node_ends_the_others(tmp_path):
    import os
    import signal

    from test_sweep_run_helpers import marked_pids
    from test_tasks_helpers import wait_until

    # two runs at once: in one node 2 freezes (node 0 notices, and tells node 1), in the
    # other node 0 does (node 1 notices); their pods cut off: nothing closes a connection
    three = _node_jobs(tmp_path / "a", ["sleep 120"] * 3)
    two = _node_jobs(tmp_path / "b", ["sleep 120"] * 2)
    # a third: node 1's training processes are killed, its wrapper lives on (the node
    # fails); a fourth: node 1's wrapper dies with them, its connection closes unsaid
    killed = _node_jobs(tmp_path / "c", ["sleep 120"] * 2)
    vanished = _node_jobs(tmp_path / "d", ["sleep 120"] * 2)
    assert wait_until(lambda: _read(three[0] / "wrapper.log").count("joined") == 2 and all(
        "joined" in _read(run[0] / "wrapper.log") for run in (two, killed, vanished)), secs=30)
    victims = [json.loads((run[1] / "status.json").read_text()) for run in (killed, vanished)]
    for pid in marked_pids([victims[0]["nonce"]]) + [victims[1]["wrapper_pid"]] + marked_pids([victims[1]["nonce"]]):
        os.kill(pid, signal.SIGKILL)
    ends = _ended(killed, secs=30)  # the node's exit ends the run at once, not at its timeout
    assert [(d["state"], d["error"]) for d in ends] == [("failed", "node 1 ended failed"),
                                                         ("failed", "killed by SIGKILL")], ends
    [first] = _ended(vanished[:1], secs=30)  # sooner than silence would say (15 s)
    assert (first["state"], first["error"].split(":")[0]) == ("lost", "node 1 was lost"), first
    assert "connection closed without a word" in first["error"]
    assert not marked_pids([d["nonce"] for d in ends + [first, victims[1]]])
    frozen = [json.loads((d / "status.json").read_text()) for d in (three[2], two[0])]
    for pid in [doc[k] for doc in frozen for k in ("wrapper_pid", "pid")]:
        os.kill(pid, signal.SIGSTOP)
    try:
        docs = _ended([three[0], three[1], two[1]], secs=60)
    finally:
        for pid in set([doc[k] for doc in frozen for k in ("wrapper_pid", "pid")]
                       + marked_pids([doc["nonce"] for doc in frozen])):
            os.kill(pid, signal.SIGKILL)
    assert [d["state"] for d in docs] == ["lost", "lost", "lost"], docs
    assert docs[0]["error"].startswith("node 2 was lost: silent for 15s")
    assert "node 0 ended lost: node 2 was lost" in docs[1]["error"]
    assert docs[2]["error"].startswith("node 0 was lost: silent for 15s")

def test_a_node_that_could_not_start_ends_the_others_with_the_reason(tmp_path):
    from workflow.agent import node_watch

    [d0] = _node_jobs(tmp_path, ["sleep 120"], nnodes=2)  # node 1's wrapper never starts
    env = {k: v for k, v in _env_of(d0).items() if k.startswith("WF_N")}
    node_watch.tell(dict(env, WF_NODE_RANK="1"), "failed")  # what the sweep runner then does
    [doc] = _ended([d0], secs=45)
    assert (doc["state"], doc["error"]) == ("failed", "node 1 ended failed")

    # a running node ended by the client (another node's pod refused its start): its reason
    from workflow.agent import procs

    [d1] = _node_jobs(tmp_path / "ended", ["sleep 120"])
    doc, was = procs.terminate(str(d1), grace_secs=2, end=("failed", "node 1 (p1) could not be started: x"))
    assert was and (doc["state"], doc["error"]) == ("failed", "node 1 (p1) could not be started: x"), doc


def _env_of(d):
    pid = json.loads((d / "status.json").read_text())["pid"]
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return dict(item.decode().split("=", 1) for item in fh.read().split(b"\0") if b"=" in item)


def test_a_multi_node_run_whose_pod_is_killed_is_replaced_whole(two_pods):
    from test_sweep_run_helpers import marked_pids

    sp = two_pods
    _mnjob(sp, "run_id,config,seed,overrides,notes,nodes\nmn,configs/tiny.json,0,,,2\n", pods=3)
    sp.write_config({"pod": {"provider": "local", "count": 3}, "pool": {"down_after_secs": 5},
                     "sweep": {"launcher": "torchrun", "entrypoint": "mnjob.py", "nproc_per_node": 1,
                               "args": ["{config}"]}})
    sp.wf("sweep-start", check=0)
    assert json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())["nodes"] == {"mn": ["p0", "p1"]}
    out = {f"p{i}": sp.outputs_of[i] / "mn" for i in range(3)}
    end = time.monotonic() + 90
    while time.monotonic() < end and "world_size 2" not in _read(out["p1"] / "stdout.log"):
        time.sleep(0.2)
    old = {name: json.loads((out[name] / "status.json").read_text()) for name in ("p0", "p1")}
    # p0 (node 0, the rendezvous host) dies as a machine dies: every process of it at once
    sp.wf("pod-down", "--pod", "p0", "--destroy", check=0)
    assert not marked_pids([old["p0"]["nonce"]])

    # sweep-wait finds p0 down and re-places the run whole: on p1 and p2, every node again at
    # attempt 2, in one new rendezvous (p1's node of attempt 1 ended first: nothing of it runs on)
    res = sp.wf("sweep-wait", "--timeout-secs", "150", timeout=200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "p0 is down: the provider says it is terminated" in res.stdout, res.stdout
    assert "p1, p2 took mn on 2 nodes (it had p0, p1; attempt 2)" in res.stdout, res.stdout
    assert not marked_pids([old["p1"]["nonce"]]), "the old attempt's node still runs on p1"
    [run] = json.loads(sp.wf("sweep-status", "--json", check=4).stdout)["runs"]  # 4: p0 cannot be read
    assert run["state"] == "success" and [(n["pod"], n["state"]) for n in run["nodes"]] == [
        ("p1", "success"), ("p2", "success")], run
    for name in ("p1", "p2"):
        status = json.loads((out[name] / "status.json").read_text())
        assert status["attempt"] == 2 and "--rdzv_id=mn-2" in status["argv"], status
        assert status["nonce"] != old["p1"]["nonce"]
    assert (old["p0"]["attempt"], old["p1"]["attempt"]) == (1, 1)


def _state(d):
    try:
        return json.loads((d / "status.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def test_a_pod_that_refuses_its_nodes_start_ends_the_others_and_the_run_fails(two_pods):
    from test_sweep_run_helpers import marked_pids

    sp = two_pods
    _mnjob(sp, "run_id,config,seed,overrides,notes,nodes\nmn,configs/tiny.json,0,,,2\n")
    blocker = sp.outputs_of[1] / "_manifests"  # p1 answers the probe, then its start fails
    shutil.rmtree(blocker, ignore_errors=True)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    res = sp.wf("sweep-start")
    assert res.returncode != 0 and "node 1 (p1) could not be started" in res.stderr, res.stdout + res.stderr
    node0 = sp.outputs_of[0] / "mn" / "status.json"
    end = time.monotonic() + 60  # node 0 ends now, not after torchrun's join timeout (30 minutes)
    while time.monotonic() < end and _state(sp.outputs_of[0] / "mn") not in multinode.ENDED:
        time.sleep(0.2)
    doc = json.loads(node0.read_text())
    assert doc["state"] == "failed" and doc["error"].startswith("node 1 (p1) could not be started: "), doc
    end = time.monotonic() + 30
    while marked_pids([doc["nonce"]]) and time.monotonic() < end:
        time.sleep(0.1)
    assert not marked_pids([doc["nonce"]])
    [run] = sp.status()["runs"]
    assert run["state"] == "failed", run
