"""Pools (SPEC §8): naming, --pod, the fan-out, and commands on several real pods.

Pods here are real: the ``local`` provider with ``pod.count`` (each pod its own
directories on this machine) and loopback sshds, one unix user each (``tests/sshd.py``).
Parallelism is shown with barriers that every pod must reach, never with timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from workflow import pool
from workflow.config import load_config
from workflow.errors import ConfigError, ConnectionFailed, InputError

WF = str(Path(sys.executable).with_name("wf"))
SYSTEM_PY = "/usr/bin/python3"


def wf(project, *args, check=None, timeout=180):
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def write(project: Path, doc) -> None:
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def local_pool(project: Path, count: int, **extra) -> None:
    write(project, {"project": "pl", "pod": {"provider": "local", "count": count}, "remote": {"python": SYSTEM_PY},
                    **extra})


# ---------------------------------------------------------------- the pool from the config


def test_pods_are_named_in_order_from_hosts_and_count(project):
    write(project, {"pod": {"provider": "ssh", "hosts": [
        "alice@10.0.0.1:2222", {"host": "gpu-b", "port": 2200, "user": "bob", "identity_file": "/k", "addr": "10.1.0.2"}]}})
    cfg = load_config()
    p0, p1 = pool.pods(cfg)
    assert (p0.name, p0.index, p0.host) == ("p0", 0, "alice@10.0.0.1:2222")
    assert (p1.name, p1.host, p1.port, p1.user, p1.identity_file, p1.addr) == ("p1", "gpu-b", 2200, "bob", "/k", "10.1.0.2")
    c1 = pool.pod_config(cfg, p1)
    assert (c1.pod.host, c1.pod.port, c1.pod.user, c1.pod.identity_file, c1.pod_name) == ("gpu-b", 2200, "bob", "/k", "p1")
    from workflow.transport.sshconfig import resolve_ssh_endpoint

    ep0 = resolve_ssh_endpoint(pool.pod_config(cfg, p0))
    assert (ep0.user, ep0.host, ep0.port) == ("alice", "10.0.0.1", 2222)

    local_pool(project, 3)
    cfg = load_config()
    assert [p.name for p in pool.pods(cfg)] == ["p0", "p1", "p2"]
    assert pool.pod_config(cfg, pool.pods(cfg)[0]) is cfg  # the first pod sees the config unchanged
    dirs = [pool.pod_config(cfg, p).remote.outputs_dir for p in pool.pods(cfg)]
    assert len(set(dirs)) == 3 and dirs[0] == cfg.remote.outputs_dir


@pytest.mark.parametrize("doc, says", [
    ({"pod": {"provider": "local", "hosts": ["a"]}}, "pod.hosts is for provider 'ssh'"),
    ({"pod": {"provider": "ssh", "hosts": ["a", "b"], "count": 3}}, "pod.count is 3 but pod.hosts lists 2"),
    ({"pod": {"provider": "ssh", "host": "a", "count": 2}}, "an ssh pool is its list of hosts"),
])
def test_a_pool_that_cannot_be_is_a_config_error(project, doc, says):
    write(project, doc)
    with pytest.raises(ConfigError, match=says):
        pool.pods(load_config())


def test_bad_pool_keys_are_reported_with_their_line(project):
    (project / "configs" / "workflow.yaml").write_text(
        "pod:\n  provider: ssh\n  hosts:\n    - {host: a, prot: 22}\n  count: 0\n")
    res = wf(project, "config-validate", check=2)
    assert "pod.hosts[0].prot: unknown key; did you mean 'port'?" in res.stderr
    assert "pod.count" in res.stderr


def test_select_by_name_or_index_and_a_bad_one_is_exit_2(project):
    local_pool(project, 3)
    cfg = load_config()
    assert [p.name for p in pool.select(cfg, None)] == ["p0", "p1", "p2"]
    assert [p.name for p in pool.select(cfg, "p2")] == ["p2"]
    assert [p.name for p in pool.select(cfg, "1")] == ["p1"]
    with pytest.raises(InputError, match="no such pod; this pool has p0, p1, p2"):
        pool.select(cfg, "p7")
    res = wf(project, "fsm-status", "--pod", "p9", check=2)
    assert "p0, p1, p2" in res.stderr


def test_each_pod_keeps_its_own_session_record(project):
    from workflow import session

    write(project, {"pod": {"provider": "vastai", "count": 2}})
    cfg = load_config()
    c0, c1 = (pool.pod_config(cfg, p) for p in pool.pods(cfg))
    session.save(session.Session(provider="vastai", pod_id="111", host="10.0.0.1", port=22), c0)
    session.save(session.Session(provider="vastai", pod_id="222", host="10.0.0.2", port=22), c1)
    session.record_fetched("r1", config=c1, dest="artifacts/r1")
    assert (project / ".podflow" / "session.json").exists() and (project / ".podflow" / "session-p1.json").exists()
    assert (session.load(c0).pod_id, session.load(c1).pod_id) == ("111", "222")
    assert session.fetched_runs(c0) == set() and session.fetched_runs(c1) == {"r1"}


# ---------------------------------------------------------------- the fan-out


def test_fan_out_runs_pods_at_once_keeps_order_and_collects_every_failure():
    pods = [pool.Pod(f"p{i}", i) for i in range(4)]
    barrier = threading.Barrier(4, timeout=20)  # broken unless all four run at the same time

    def work(pod):
        barrier.wait()
        if pod.index in (1, 3):
            raise ConnectionFailed(f"cannot reach {pod.name}'s host", hint="check it")
        return pod.index * 10

    results = pool.fan_out(pods, work)
    assert [r.pod.name for r in results] == ["p0", "p1", "p2", "p3"]
    assert [r.value for r in results if r.ok] == [0, 20]
    with pytest.raises(pool.PodsFailed) as err:
        pool.raise_failures(results)
    assert err.value.exit_code == 4
    assert "2 of 4 pods failed: p1, p3" in err.value.message
    assert "p1: cannot reach p1's host" in err.value.message and "p3: cannot reach p3's host" in err.value.message


def test_a_one_pod_pool_raises_its_error_unchanged():
    exc = ConnectionFailed("down")
    results = pool.fan_out([pool.Pod("p0", 0)], lambda pod: (_ for _ in ()).throw(exc))
    with pytest.raises(ConnectionFailed) as err:
        pool.raise_failures(results)
    assert err.value is exc


def test_the_highest_exit_code_wins():
    from workflow.errors import CheckFailed

    results = [pool.PodResult(pool.Pod("p0", 0), error=CheckFailed("x")),
               pool.PodResult(pool.Pod("p1", 1), error=InputError("y")), pool.PodResult(pool.Pod("p2", 2), value=1)]
    with pytest.raises(pool.PodsFailed) as err:
        pool.raise_failures(results)
    assert err.value.exit_code == 2


# ---------------------------------------------------------------- local pools, for real


def test_local_pool_every_pod_its_own_state_and_pod_targets_one(project):
    local_pool(project, 3)
    res = wf(project, "pod-up", check=0)
    lines = [ln for ln in res.stdout.splitlines() if "pod ready" in ln]
    assert [ln.split(":")[0] for ln in lines] == ["p0", "p1", "p2"], res.stdout
    assert all(ln.startswith(f"p{i}: pod ready: local") and "POD_READY" in ln for i, ln in enumerate(lines))

    wf(project, "fsm-reset", "BOOTSTRAPPED", "--pod", "p1", "--reason", "test", check=0)
    doc = json.loads(wf(project, "fsm-status", "--json", check=0).stdout)
    assert doc["pods"] == [{"name": "p0", "state": "POD_READY", "updated_at": doc["pods"][0]["updated_at"]},
                           {"name": "p1", "state": "BOOTSTRAPPED", "updated_at": doc["pods"][1]["updated_at"]},
                           {"name": "p2", "state": "POD_READY", "updated_at": doc["pods"][2]["updated_at"]}]
    assert doc["state"] == "POD_READY"  # the pool's lowest
    one = json.loads(wf(project, "fsm-status", "--json", "--pod", "1", check=0).stdout)
    assert one["state"] == "BOOTSTRAPPED" and [p["name"] for p in one["pods"]] == ["p1"]
    base = project / ".podflow"
    states = [base / "local-pod" / "outputs" / "_control" / "workflow_state.json"] + [
        base / "local-pod" / f"outputs-p{i}" / "_control" / "workflow_state.json" for i in (1, 2)]
    assert [json.loads(p.read_text())["state"] for p in states] == ["POD_READY", "BOOTSTRAPPED", "POD_READY"]

    text = wf(project, "fsm-status", check=0).stdout
    assert "p1: BOOTSTRAPPED" in text and "pool: POD_READY" in text

    # a command refused on some pods names them (exit 3); the others did their work
    local_pool(project, 3, checkout={"repo_url": str(project / "no-such-repo")})
    res = wf(project, "checkout", check=3)
    assert "3 of 3 pods failed" in res.stderr
    assert "p0, p2: 'checkout' is not allowed in state POD_READY" in res.stderr, res.stderr
    assert "p1: cannot tell which commit the default branch is" in res.stderr


def test_remote_exec_reaches_every_pod_at_once(project, tmp_path):
    local_pool(project, 3)
    wf(project, "pod-up", check=0)
    meet = tmp_path / "meet"
    meet.mkdir()
    # each pod's command waits until all three have started: serial pods would time out
    cmd = (f'touch {meet}/$$; for i in $(seq 300); do [ $(ls {meet} | wc -l) -ge 3 ] && break; sleep 0.1; done; '
           f'[ $(ls {meet} | wc -l) -ge 3 ] && pwd && echo met')
    res = wf(project, "remote-exec", cmd, check=0)
    met = [ln for ln in res.stdout.splitlines() if ln.endswith(": met")]
    assert sorted(ln.split(":")[0] for ln in met) == ["p0", "p1", "p2"], res.stdout

    res = wf(project, "remote-exec", "--pod", "p2", 'exit 3', check=3)
    res = wf(project, "remote-exec", f'[ "$(pwd)" = "$HOME" ] || true; test -e {meet}/stop', check=1)
    assert "the command failed on p0 (exit 1), p1 (exit 1), p2 (exit 1)" in res.stderr


# ---------------------------------------------------------------- ssh pools, for real


@pytest.fixture
def ssh_pool(ssh_client_keys, ssh_session_dir):
    """Two loopback sshds, one unix user each (wfpools0, wfpools1)."""
    from sshd import SshPod

    pods = [SshPod(ssh_client_keys, ssh_session_dir, user=f"wfpools{i}") for i in range(2)]
    tag = uuid.uuid4().hex[:8]
    try:
        for p in pods:
            p.start()
        yield pods, tag
    finally:
        for p in pods:
            p.cleanup()
            subprocess.run(["rm", "-rf", str(p.home / f"wfpool-{tag}")], check=False)


def ssh_pool_config(project, pods, tag, **extra):
    write(project, {
        "project": f"sp{tag}",
        "pod": {"provider": "ssh", "identity_file": str(pods[0].key_path), "known_hosts": ".podflow/known_hosts",
                "connect_timeout_secs": 2,
                "hosts": [f"{pods[0].user}@127.0.0.1:{pods[0].port}",
                          {"host": "127.0.0.1", "port": pods[1].port, "user": pods[1].user}]},
        "remote": {"workdir": f"~/wfpool-{tag}/repo", "outputs_dir": f"~/wfpool-{tag}/outputs",
                   "data_dir": f"~/wfpool-{tag}/data"},
        "checkout": {"require_cuda": False, "require_torch": False},
        **extra,
    })


@pytest.mark.xdist_group("wfpools")  # users wfpools0/1
def test_ssh_pool_one_line_per_pod_and_a_dead_pod_named(ssh_pool, project):
    pods, tag = ssh_pool
    ssh_pool_config(project, pods, tag)
    doc = json.loads(wf(project, "check-connection", "--json", check=0).stdout)
    assert [(e["name"], e["user"]) for e in doc["pods"]] == [("p0", "wfpools0"), ("p1", "wfpools1")]
    wf(project, "pod-up", check=0)
    assert (pods[1].home / f"wfpool-{tag}" / "outputs" / "_control" / "workflow_state.json").exists()

    one = wf(project, "check-connection", "--pod", "p1", check=0).stdout
    assert "user: wfpools1" in one and "p0" not in one  # one pod: its own output, unchanged

    pods[1].stop()  # the pod dies: no listener, no session left (kept connections included)
    pods[1].drop_connections()
    res = wf(project, "fsm-status", "--json")
    assert res.returncode == 4, res.stderr
    doc = json.loads(res.stdout)
    assert doc["pods"][0] == {"name": "p0", "state": "POD_READY", "updated_at": doc["pods"][0]["updated_at"]}
    assert doc["pods"][1]["name"] == "p1" and doc["pods"][1]["exit_code"] == 4
    res = wf(project, "check-connection")
    assert res.returncode == 4
    assert "p0: user: wfpools0" in res.stdout
    assert "1 of 2 pods failed: p1" in res.stderr and "p1: cannot reach" in res.stderr


# ---------------------------------------------------------------- the flow on a pool


def test_push_data_reaches_every_pod(project, tmp_path):
    local_pool(project, 2)
    src = tmp_path / "ds"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(2048))
    doc = json.loads(wf(project, "push-data", str(src), "--json", check=0).stdout)
    assert [(e["name"], e["files"]) for e in doc["pods"]] == [("p0", 2), ("p1", 2)]
    for data in ("data", "data-p1"):
        placed = project / ".podflow" / "local-pod" / data / "ds"
        assert (placed / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    res = wf(project, "push-data", str(src), "--pod", "p1", check=0)
    assert res.stdout.startswith("ds: 2 files") and "data-p1/ds" in res.stdout and "p0:" not in res.stdout


from gitrepo import git, git_repo  # noqa: E402,F401 - fixture


def test_checkout_resolves_the_commit_once_and_every_pod_gets_it(project, git_repo):
    checkout = {"repo_url": git_repo.url, "require_torch": False, "require_cuda": False}
    local_pool(project, 2, checkout=checkout)
    wf(project, "fsm-reset", "BOOTSTRAPPED", "--reason", "test", check=0)
    res = wf(project, "checkout", check=0)
    done = [ln for ln in res.stdout.splitlines() if "checkout: CHECKED_OUT" in ln]
    assert sorted(ln.split(":")[0] for ln in done) == ["p0", "p1"] and all(git_repo.main_sha[:12] in ln for ln in done)
    doc = json.loads(wf(project, "fsm-status", "--json", check=0).stdout)
    assert [p["state"] for p in doc["pods"]] == ["CHECKED_OUT", "CHECKED_OUT"]
    repos = [project / ".podflow" / "local-pod" / d for d in ("repo", "repo-p1")]
    assert [git("rev-parse", "HEAD", cwd=r) for r in repos] == [git_repo.main_sha] * 2

    # the branch moves on; a pod told the pool's SHA still checks that one out
    new_sha = git_repo.commit("main", "README.md", "# v2\n")
    from workflow import prepare, runtime

    runtime.reset()
    with runtime.on_pod(pool.pods(runtime.config())[1]):
        out = prepare.run("checkout", progress="quiet", sha=git_repo.main_sha, echo=lambda line: None)
    assert out.result["sha"] == git_repo.main_sha != new_sha
    assert git("rev-parse", "HEAD", cwd=repos[1]) == git_repo.main_sha
    assert git("rev-parse", "HEAD", cwd=repos[0]) == git_repo.main_sha
    runtime.reset()
    wf(project, "checkout", "--progress", "quiet", check=0)
    assert [git("rev-parse", "HEAD", cwd=r) for r in repos] == [new_sha] * 2


# ---------------------------------------------------------------- sweeps on a pool


def test_place_keeps_ok_runs_and_spreads_the_rest_by_gpu_load():
    from workflow.sweep.pooled import PodOffer, place

    pods = [PodOffer("p0", 2, {"a": "success", "b": "failed"}), PodOffer("p1", 1, {"a": "lost"}), PodOffer("p2", 1, {})]
    rows = [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1), ("f", 1)]
    placed = place(rows, pods)
    assert placed["a"] == "p0"  # ok there: stays (not launched again)
    assert placed["b"] == "p0"  # ran there: goes back to its files
    # b takes one of p0's two GPUs; c, d, e, f fill the least loaded per GPU
    assert [placed[r] for r in "cdef"] == ["p1", "p2", "p0", "p0"]  # ties: the lower index
    assert place([("x", 1)], pods, recorded={"x": "p2"}) == {"x": "p2"}
    assert place([("x", 1)], pods, recorded={"x": "p9"}) == {"x": "p0"}  # a pod not in the pool: placed anew


@pytest.fixture
def pool_sweep(project):
    from test_sweep_run_helpers import TORCH_VENV, SweepProject

    if not (TORCH_VENV / "bin" / "python").exists():
        pytest.skip("needs .venv-torch (bash scripts/setup)")
    rows = "".join(f"r{i:02d},configs/tiny.json,{i},steps=2{' fail=1' if i == 5 else ''},\n" for i in range(12))
    sp = SweepProject(project, {"pod": {"provider": "local", "count": 3}}, "run_id,config,seed,overrides,notes\n" + rows)
    import shutil

    for i in (1, 2):
        shutil.copytree(sp.repo, sp.pod / f"repo-p{i}", symlinks=True)
    sp.outputs_of = [sp.pod / "outputs", sp.pod / "outputs-p1", sp.pod / "outputs-p2"]
    return sp


def test_a_sweep_spreads_over_the_pool_each_run_on_one_pod(pool_sweep):
    sp = pool_sweep
    res = sp.wf("sweep-start", check=0)
    started = [ln for ln in res.stdout.splitlines() if "started: 4 run(s)" in ln]
    assert sorted(ln.split(":")[0] for ln in started) == ["p0", "p1", "p2"], res.stdout
    placed = json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())["runs"]
    assert sorted(placed.values()) == ["p0"] * 4 + ["p1"] * 4 + ["p2"] * 4

    waited = sp.wf("sweep-wait", "--timeout-secs", "150")
    assert waited.returncode == 1, waited.stdout + waited.stderr  # r05 fails on purpose
    placed = json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())["runs"]  # an idle pod may take runs
    assert "pods: p0 up" in waited.stdout and "r05" in waited.stdout
    doc = json.loads(sp.wf("sweep-status", "--json", check=0).stdout)
    assert [(p["name"], p["state"], sum(p["counts"].values())) for p in doc["pods"]] == \
        [(name, "up", list(placed.values()).count(name)) for name in ("p0", "p1", "p2")]
    assert [r["id"] for r in doc["runs"]] == [f"r{i:02d}" for i in range(12)]  # CSV order
    assert all(r["pod"] == placed[r["id"]] for r in doc["runs"])
    assert doc["counts"] == {"success": 11, "failed": 1} and doc["percent"] == 100.0
    for i in range(12):  # every run's files on exactly the pod that ran it
        holders = [n for n, out in zip(("p0", "p1", "p2"), sp.outputs_of) if (out / f"r{i:02d}").exists()]
        assert holders == [placed[f"r{i:02d}"]]
    one = json.loads(sp.wf("sweep-status", "--json", "--pod", "p1", check=0).stdout)
    assert {r["id"] for r in one["runs"]} == {k for k, v in placed.items() if v == "p1"}

    ok_before = {r: json.loads((sp.outputs_of[int(placed[r][1])] / r / "status.json").read_text())
                 for r in placed if r != "r05"}
    sp.write_csv((sp.root / "sweeps" / "sweep.csv").read_text().replace("steps=2 fail=1", "steps=2 sleep=1 fail=1"))
    res = sp.wf("sweep-start", check=0)  # again: only the failed run, on its own pod
    holder = placed["r05"]
    assert f"{holder}: sweep" in res.stdout and "1 run(s), " in res.stdout, res.stdout
    assert res.stdout.count("started:") == 3
    # the pool's wait hears the last runner's end when it comes: with rounds 300 s apart it
    # still returns once r05's retry ends (a wait that slept between its reads would not)
    from workflow import pool, runtime
    from workflow.sweep.balance import Keeper

    runtime.reset()
    keeper = Keeper(runtime.config(), pool.pods(runtime.config()), say=lambda text: None)
    began = time.monotonic()
    doc = keeper.doc(keeper.wait(timeout_secs=150, interval=300))
    assert time.monotonic() - began < 150 and doc["counts"] == {"success": 11, "failed": 1}, doc
    runtime.reset()
    r05 = json.loads((sp.outputs_of[int(holder[1])] / "r05" / "status.json").read_text())
    assert r05["attempt"] == 2
    for r, before in ok_before.items():  # an ok run never runs again
        assert json.loads((sp.outputs_of[int(placed[r][1])] / r / "status.json").read_text()) == before

    fetched = json.loads(sp.wf("fetch-all", "--json", check=0).stdout)
    assert sorted(r["run_id"] for e in fetched["pods"] for r in e["runs"]) == sorted(placed)
    assert all((sp.root / "artifacts" / r / "stdout.log").exists() for r in placed)


def test_a_pod_down_at_start_is_left_out_and_a_run_held_by_another_pod_is_left_alone_with_pod(pool_sweep):
    sp = pool_sweep
    sp.write_csv("run_id,config,seed,overrides,notes\nr00,configs/tiny.json,0,steps=1,\nr01,configs/tiny.json,1,steps=1,\n"
                 "r02,configs/tiny.json,2,steps=1,\n")
    down = sp.wf("pod-down", "--pod", "p2", "--destroy", check=0)  # a local pool pod dies: nothing answers there
    assert down.stdout.startswith("local pod terminated: "), down.stdout
    said = json.loads(sp.wf("pod-status", "--pod", "p2", "--json", check=0).stdout)  # as a cloud API would say
    assert (said["pod"]["state"], said["fsm_state"]) == ("terminated", None)
    res = sp.wf("sweep-start", "--json", check=0)  # p2 does not block the sweep: its share goes to p0, p1
    assert [(e["name"], e.get("exit_code")) for e in json.loads(res.stdout)["pods"]] == [
        ("p0", None), ("p1", None), ("p2", 4)]
    assert "warning: p2 could not be reached" in res.stderr and "its rows went to p0, p1" in res.stderr, res.stderr
    placed = json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())["runs"]
    assert placed == {"r00": "p0", "r01": "p1", "r02": "p0"}
    sp.wf("sweep-wait", "--timeout-secs", "120", check=0)  # p2 is down (the local provider says so)
    res = sp.wf("sweep-start", "--pod", "p2", check=2)  # every run is held by p0 or p1: nothing moves
    assert "held by a pod outside --pod" in res.stderr
    res = sp.wf("sweep-start", "--pod", "p1", "--json", check=0)  # only p1's run, already ok: skipped
    doc = json.loads(res.stdout)
    assert [(r["run_id"], r["launch"]) for r in doc["runs"]] == [("r01", False)]
    assert not (sp.outputs_of[2] / "r00").exists() and not (sp.outputs_of[1] / "r00").exists()


def test_stop_reaches_every_pod_and_fetch_run_goes_to_the_holder(pool_sweep):
    sp = pool_sweep
    sp.write_csv("run_id,config,seed,overrides,notes\n"
                 "quick,configs/tiny.json,0,steps=1,\nlong1,configs/tiny.json,1,sleep=30 steps=4,\n"
                 "long2,configs/tiny.json,2,sleep=30 steps=4,\n")
    sp.wf("sweep-start", check=0)
    placed = json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())["runs"]
    assert placed == {"quick": "p0", "long1": "p1", "long2": "p2"}
    end = time.monotonic() + 60
    while time.monotonic() < end:  # wait until p0's share ended and the long runs run
        doc = json.loads(sp.wf("sweep-status", "--json", check=0).stdout)
        states = {r["id"]: r["state"] for r in doc["runs"]}
        if states == {"quick": "success", "long1": "running", "long2": "running"}:
            break
        time.sleep(0.5)
    assert states == {"quick": "success", "long1": "running", "long2": "running"}, states
    res = sp.wf("sweep-stop", check=0)  # p0's share had ended: nothing to stop there, no refusal
    assert "p0: nothing to stop" in res.stdout and "p1: sweep stopped: 1 run(s) cancelled (long1)" in res.stdout
    assert "p2: sweep stopped: 1 run(s) cancelled (long2)" in res.stdout
    states = json.loads(sp.wf("fsm-status", "--json", check=0).stdout)["pods"]
    assert [p["state"] for p in states] == ["SWEEP_COMPLETED", "CHECKED_OUT", "CHECKED_OUT"]

    doc = json.loads(sp.wf("fetch-run", "long2", "--json", check=0).stdout)  # from p2, the pod that holds it
    assert doc["run_id"] == "long2" and doc["state"] == "cancelled"
    assert (sp.root / "artifacts" / "long2" / "status.json").exists()


def test_a_pod_that_cannot_be_read_is_down_and_its_runs_unknown():
    from workflow.errors import ConnectionFailed
    from workflow.sweep.control import SweepStatus
    from workflow.sweep.pooled import Placement, merge

    def status(*runs):
        return SweepStatus.from_doc({"state": "running", "counts": {}, "percent": 0,
                                     "runs": [{"id": i, "state": s, "line": n} for i, s, n in runs]})

    p0, p1 = pool.Pod("p0", 0), pool.Pod("p1", 1)
    read = [pool.PodResult(p0, value=status(("a", "success", 2), ("b", "running", 3), ("stale", "lost", 9))),
            pool.PodResult(p1, error=ConnectionFailed("cannot reach p1"))]
    doc = merge(read, Placement(runs={"a": "p0", "b": "p0", "c": "p1", "stale": "p1"}))
    assert [(r["id"], r["state"], r["pod"]) for r in doc["runs"]] == [
        ("a", "success", "p0"), ("b", "running", "p0"), ("c", "unknown", "p1"), ("stale", "unknown", "p1")]
    assert [(p["name"], p["state"]) for p in doc["pods"]] == [("p0", "up"), ("p1", "down")]
    assert doc["counts"] == {"success": 1, "running": 1, "unknown": 2} and doc["state"] == "running"
