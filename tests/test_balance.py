"""Balance and recovery of a pool's sweep (SPEC §8, ``workflow/sweep/balance.py``).

Pods are real: ``local`` pools (each pod its own directories) and loopback sshds, one
unix user each. Runs are tiny sleep-bound jobs; nothing here asserts a duration.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from test_pool import pool_sweep  # noqa: F401 - fixture
from test_sweep_run_helpers import WF
from workflow.errors import ConnectionFailed, RemoteCommandFailed
from workflow import pool
from workflow.sweep import balance, pooled
from workflow.sweep.control import SweepStatus


def record(sp) -> dict:
    return json.loads((sp.root / ".podflow" / "pool-sweep.json").read_text())


def run_dirs(outputs, run_id):
    """The pods' outputs dirs that have a status.json for ``run_id``."""
    return [i for i, out in enumerate(outputs) if (Path(out) / run_id / "status.json").exists()]


# ---------------------------------------------------------------- health: only a death is a death


def test_down_needs_consecutive_failed_reads_for_down_after_secs():
    now = [0.0]
    health = balance.Health(10, clock=lambda: now[0])
    p = pool.Pod("p1", 1)
    lost = pool.PodResult(p, error=ConnectionFailed("cannot reach p1"))
    quiet = lambda pod: None  # noqa: E731 - the provider says nothing
    health.observe(lost, quiet)
    now[0] = 9.0
    health.observe(lost, quiet)
    assert health.down("p1") is None  # 9 s of failures < 10 s
    now[0] = 9.5
    health.observe(pool.PodResult(p, value="a slow answer, but an answer"), quiet)
    now[0] = 12.0
    health.observe(lost, quiet)
    assert health.down("p1") is None  # the streak started again at 12 s
    health.observe(pool.PodResult(p, error=RemoteCommandFailed("x", 1, "")), quiet)
    assert health.down("p1") is None  # it answered (with an error): it is not unreachable
    now[0] = 13.0
    health.observe(lost, quiet)
    now[0] = 23.5
    health.observe(lost, quiet)
    assert "unreachable for 10s" in health.down("p1")
    health.observe(pool.PodResult(p, value="back"), quiet)
    assert health.down("p1") is None
    health.observe(lost, lambda pod: "the provider says it is stopped")  # the provider: at once
    assert health.down("p1") == "the provider says it is stopped"


def _st(state, fsm, *runs, withdrawn=()):
    return SweepStatus.from_doc({"state": state, "fsm_state": fsm, "counts": {}, "percent": 0,
                                 "runs": [{"id": i, "state": s} for i, s in runs], "withdrawn": list(withdrawn)})


def test_plan_moves_idle_pods_take_half_a_queue_and_a_down_pods_unfinished_runs():
    rec = pooled.Placement(runs={"a": "p0", "b": "p0", "c": "p0", "d": "p0", "e": "p1", "f": "p2", "g": "p2"},
                           ended={"f": "success"})
    up = {"p0": _st("running", "SWEEP_RUNNING", ("a", "running"), ("b", "pending"), ("c", "pending"), ("d", "pending")),
          "p1": _st("completed", "SWEEP_COMPLETED", ("e", "success"))}
    assert balance.plan_moves(up, [], rec) == [balance.Move(("c", "d"), "p1", "p0", "balance")]
    # p2 is down: its run not known to have ended goes first, with no pod to withdraw it from
    assert balance.plan_moves(up, ["p2"], rec) == [balance.Move(("g",), "p1", None, "recover")]
    assert balance.plan_moves(up, ["p2"], rec, recover=False) == [balance.Move(("c", "d"), "p1", "p0", "balance")]
    # a run a pod withdrew that no pod started is placed again; a busy pool moves nothing
    up["p1"] = _st("completed", "SWEEP_COMPLETED", ("e", "success"), withdrawn=("x",))
    assert balance.plan_moves(up, [], pooled.Placement(runs={**rec.runs, "x": "p1"})) == [
        balance.Move(("x",), "p1", None, "stranded")]
    up["p1"] = _st("running", "SWEEP_RUNNING", ("e", "running"))
    assert balance.plan_moves(up, ["p2"], rec) == []
    # a pod that comes back is not given the runs that left it while it was down
    up["p1"] = _st("completed", "SWEEP_COMPLETED", ("e", "success"))
    back = pooled.Placement(runs=rec.runs, left={"d": ["p1"]})
    assert balance.plan_moves(up, [], back) == [balance.Move(("c",), "p1", "p0", "balance")]  # half of b, c


def test_a_multi_node_run_with_a_down_pod_is_replaced_whole_or_waits():
    gang = pooled.Placement(runs={"mn": "p0", "s": "p3"}, nodes={"mn": ["p0", "p3"]})
    idle = lambda *runs: _st("completed", "SWEEP_COMPLETED", *runs)  # noqa: E731
    up = {"p0": idle(("mn", "lost")), "p1": idle(), "p2": idle()}
    # all its nodes on live pods (its own first), never node 1 alone; p3's single run too
    assert balance.plan_moves(up, ["p3"], gang) == [balance.Move(("mn",), "p0", None, "recover", nodes=("p0", "p1")),
                                                    balance.Move(("s",), "p2", None, "recover")]
    # fewer live idle pods than nodes: it waits (the single run still goes)
    up["p1"] = up["p2"] = _st("running", "SWEEP_RUNNING", ("x", "running"))
    assert balance.plan_moves(up, ["p3"], gang) == [balance.Move(("s",), "p0", None, "recover")]
    # a run known to have ended (all its nodes read) stays as it ended
    assert balance.plan_moves(up, ["p3"], pooled.Placement(runs=gang.runs, nodes=gang.nodes, ended={"mn": "success"})
                              ) == [balance.Move(("s",), "p0", None, "recover")]


# ---------------------------------------------------------------- balance, for real, under a race


def test_idle_pods_take_pending_runs_and_two_clients_never_place_one_run_twice(pool_sweep):
    """First only ``sweep-status --watch`` runs: it balances the pool by itself. Then a
    ``sweep-wait`` joins it: two clients balancing at once never place a run twice."""
    import time

    sp = pool_sweep
    rows = [f"slow{i},configs/tiny.json,{i},steps=2 sleep=1.5," for i in range(5)]
    rows += [f"quick{i},configs/tiny.json,{i},steps=1," for i in range(3)]
    sp.write_csv("run_id,config,seed,overrides,notes\n" + "\n".join(rows) + "\n")
    # placed as an earlier sweep left them: the slow runs on p0, the quick ones on p1
    first = {**{f"slow{i}": "p0" for i in range(5)}, **{f"quick{i}": "p1" for i in range(3)}}
    (sp.root / ".podflow").mkdir(exist_ok=True)
    (sp.root / ".podflow" / "pool-sweep.json").write_text(json.dumps({"runs": first}))
    sp.wf("sweep-start", check=0)
    assert record(sp)["runs"] == first
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def client(*args):
        return subprocess.Popen([WF, *args], cwd=sp.root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    watch = client("sweep-status", "--watch", "--interval", "1")
    end = time.monotonic() + 150
    while record(sp)["runs"] == first:  # no sweep-wait yet: the watch alone moves runs
        assert watch.poll() is None and time.monotonic() < end, watch.communicate()
        time.sleep(0.3)
    # now two clients at once: each balances; the pods' withdraw keeps a run on one pod
    clients = [watch, client("sweep-wait", "--timeout-secs", "150")]
    outs = [c.communicate(timeout=200) for c in clients]
    for c, (out, err) in zip(clients, outs):
        assert c.returncode == 0, out + err
    assert " took slow" in outs[0][0], outs[0][0]  # said by the watch
    final = record(sp)["runs"]
    moved = sorted(r for r in final if final[r] != first[r])
    assert moved and all(r.startswith("slow") for r in moved), (first, final)
    doc = json.loads(sp.wf("sweep-status", "--json", check=0).stdout)
    assert doc["counts"] == {"success": 8}
    assert all(r["pod"] == final[r["id"]] for r in doc["runs"])
    for run_id in final:  # each run ran once, on the pod the record names
        holders = run_dirs(sp.outputs_of, run_id)
        assert holders == [int(final[run_id][1])], (run_id, holders)
        st = json.loads((sp.outputs_of[holders[0]] / run_id / "status.json").read_text())
        assert st["attempt"] == 1 and st["state"] == "success"


def test_a_run_placed_since_a_client_read_the_record_is_left_alone_even_on_the_same_pod(project):
    """A client whose reads predate another client's placement of a run leaves that run
    alone, even when it was placed again on the pod it had (a withdrawn run re-placed
    where it was): the race above once started such a run on a second pod."""
    from test_pool import local_pool
    from workflow import runtime

    local_pool(project, 3)
    runtime.reset()
    cfg = runtime.config()
    pooled.save(cfg, {"r": "p2"})
    seen = pooled.load(cfg)  # the second client's view, taken before its reads
    pooled.save(cfg, {"r": "p2"})  # the first client re-places the (withdrawn) run on p2
    said = []
    assert balance.execute(cfg, balance.Move(("r",), "p0", None, "stranded"), seen, said.append) == []
    assert pooled.load(cfg).pod_of("r") == "p2" and said == []


# ---------------------------------------------------------------- a pod dies: its runs go on elsewhere


@contextlib.contextmanager
def ssh_sweep_pool(pods, project, down_after_secs: float = 3):
    """``pods`` (``SshPod``s, not started) as a pool of a sweep project: started, checked out
    by hand (``~/wft/repo``, outputs in ``~/wft/outputs``: one config names every pod's)."""
    import yaml

    from test_sweep_run_helpers import checkout_on_ssh_pod

    try:
        for p in pods:
            p.start()
            checkout_on_ssh_pod(p)
            shutil.rmtree(p.home / "wft" / "outputs", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (p.home / "wft" / "repo").unlink()
            (p.home / "wft" / "repo").symlink_to(p.remote_dir / "repo")
            os.lchown(p.home / "wft" / "repo", p.uid, p.gid)
        doc = {
            "project": "rec",
            "pod": {"provider": "ssh", "identity_file": str(pods[0].key_path), "known_hosts": ".podflow/known_hosts",
                    "connect_timeout_secs": 2,
                    "hosts": [{"host": p.host, "port": p.port, "user": p.user} for p in pods]},
            "remote": {"workdir": "~/wft/repo", "outputs_dir": "~/wft/outputs", "data_dir": "~/wft/data"},
            "checkout": {"require_cuda": False},
            "pool": {"down_after_secs": down_after_secs},
            "sweep": {"csv": "sweeps/sweep.csv", "workdir": "examples", "launcher": "python",
                      "entrypoint": "job.py", "args": ["{config}", "--seed={seed}"]},
        }
        (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        (project / "sweeps").mkdir(exist_ok=True)
        yield pods
    finally:
        for p in pods:
            p.cleanup()
            with contextlib.suppress(FileNotFoundError):
                (p.home / "wft" / "repo").unlink()
            shutil.rmtree(p.home / "wft" / "outputs", ignore_errors=True)


@pytest.fixture
def two_ssh_pods(ssh_client_keys, ssh_session_dir, project):
    """Two loopback sshd pods (users wfrecover0/1) of a sweep project."""
    from sshd import SshPod

    with ssh_sweep_pool([SshPod(ssh_client_keys, ssh_session_dir, user=f"wfrecover{i}") for i in range(2)],
                        project) as pods:
        yield pods


def wf(project, *args, check=None, timeout=200):
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check is not None:
        assert proc.returncode == check, f"wf {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def kill_pod(p) -> None:
    """The pod dies: its sshd, every session, every process of its user (by PID)."""
    import signal

    p.stop()
    p.drop_connections()
    for _ in range(5):
        for pid in p.user_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.xdist_group("wfrecover")  # users wfrecover0/1 and their ~/wft, shared with reliability/test_rel_recover.py
def test_a_pod_killed_mid_sweep_its_runs_finish_elsewhere_attempt_2_and_no_ok_run_twice(two_ssh_pods, project):
    import time

    pods = two_ssh_pods
    (project / "sweeps" / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n" + "".join(
        f"r{i},configs/tiny.json,{i},steps=3 sleep=1,\n" for i in range(6)))
    wf(project, "fsm-reset", "CHECKED_OUT", "--reason", "checked out by hand (test)", check=0)
    wf(project, "sweep-start", check=0)
    placed = record_of(project)["runs"]
    on_p1 = sorted(r for r, name in placed.items() if name == "p1")
    assert len(on_p1) == 3, placed
    end = time.monotonic() + 90
    while True:  # p1 has ended a run ok and runs another: then it dies
        doc = json.loads(wf(project, "sweep-status", "--json", check=0).stdout)
        states = {r["id"]: r["state"] for r in doc["runs"] if r["pod"] == "p1"}
        if list(states.values()).count("success") >= 1 and "running" in states.values():
            break
        assert time.monotonic() < end, doc
        time.sleep(0.3)
    ok_on_p1 = sorted(r for r, s in states.items() if s == "success")
    kill_pod(pods[1])

    rec = wf(project, "sweep-recover", "--json")  # on demand: a pod unreachable twice is down
    doc = json.loads(rec.stdout)
    assert list(doc["down"]) == ["p1"] and "unreachable" in doc["down"]["p1"], rec.stdout + rec.stderr
    # p0 takes them once its runner has ended; until then they wait (exit 1)
    assert sorted(doc["moved"] + doc["waiting"]) == sorted(r for r in on_p1 if r not in ok_on_p1)
    assert rec.returncode == (1 if doc["waiting"] else 0)

    res = wf(project, "sweep-wait", "--timeout-secs", "150")
    assert res.returncode == 0, res.stdout + res.stderr
    final = record_of(project)
    moved = sorted(r for r in on_p1 if r not in ok_on_p1)
    assert sorted(r for r in final["runs"] if final["runs"][r] != placed[r]) == moved
    assert all(final["runs"][r] == "p0" and final["attempts"][r] == 2 for r in moved), final
    out0 = pods[0].home / "wft" / "outputs"
    for r in moved:  # finished on p0, as attempt 2
        st = json.loads((out0 / r / "status.json").read_text())
        assert (st["state"], st["attempt"]) == ("success", 2)
    for r in ok_on_p1:  # ended ok on p1 before it died: never run again
        assert not (out0 / r).exists()
    for r, name in placed.items():  # p0's own runs ran once
        if name == "p0":
            assert json.loads((out0 / r / "status.json").read_text())["attempt"] == 1
    doc = json.loads(wf(project, "sweep-status", "--json").stdout)
    assert doc["counts"] == {"success": 6}, doc
    assert [(p["name"], p["state"]) for p in doc["pods"]] == [("p0", "up"), ("p1", "down")]


def record_of(project) -> dict:
    return json.loads((project / ".podflow" / "pool-sweep.json").read_text())


# ---------------------------------------------------------------- a preempted cloud pod, replaced


from gitrepo import git_daemon, git_repo  # noqa: E402,F401 - fixtures


@pytest.mark.xdist_group("wfrecover")  # users wfrecover2..
def test_a_preempted_cloud_pod_is_replaced_and_the_replacement_finishes_its_runs(
        tmp_path, ssh_client_keys, ssh_session_dir, git_repo, git_daemon):
    import time

    from fakes.harness import CloudProject
    from fakes.runpod import GpuType
    from sshd import SshPod

    made = []
    rec = f"wfrec-{uuid.uuid4().hex[:8]}"  # in the users' homes: another run's (before, or at once) is not this one's

    def make_sshd():  # each rented pod logs in its own user (the API names it), as pools need
        p = SshPod(ssh_client_keys, ssh_session_dir, user=f"wfrecover{2 + len(made)}")
        p.login_user = p.user
        made.append(p)
        return p

    gpu = GpuType("NVIDIA GPU 1", "GPU 1", secure_price=0.5, community_price=None)
    with contextlib.ExitStack() as stack:
        cp = stack.enter_context(CloudProject("runpod", tmp_path / "p", ssh_client_keys, ssh_session_dir, [gpu],
                                              count=2, user=None))
        stack.callback(lambda: [shutil.rmtree(p.home / rec, ignore_errors=True) for p in made])
        stack.callback(lambda: [p.cleanup() for p in made])
        cp.api.make_sshd = make_sshd
        sha = cp.job_sweep(git_repo, git_daemon, "".join(f"c{i},steps=3 sleep=1\n" for i in range(6)),
                           remote={"workdir": f"~/{rec}/repo", "outputs_dir": f"~/{rec}/outputs",
                                   "data_dir": f"~/{rec}/data"},
                           pool={"down_after_secs": 3, "replace": True})

        def ok(*args, timeout=180):
            r = cp.wf(*args, timeout=timeout)
            assert r.returncode == 0, f"wf {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
            return r

        ok("pod-up")
        ok("bootstrap")
        ok("checkout")
        ok("sweep-start")
        placed = json.loads((cp.root / ".podflow" / "pool-sweep.json").read_text())["runs"]
        end = time.monotonic() + 90
        while True:
            doc = json.loads(ok("sweep-status", "--json").stdout)
            mine = [r["state"] for r in doc["runs"] if r["pod"] == "p1"]
            if "success" in mine and "running" in mine:  # one ended ok there (its files go with the pod)
                break
            assert time.monotonic() < end, doc
            time.sleep(0.3)
        ok_before = [r["id"] for r in doc["runs"] if r["pod"] == "p1" and r["state"] == "success"]
        old = json.loads((cp.root / ".podflow" / "session-p1.json").read_text())["pod_id"]
        cp.api.pods[str(old)].fake.preempt()  # the API says exited, its sshd and its processes are gone

        res = cp.wf("sweep-wait", "--timeout-secs", "240", timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "p1 is down: the provider says it is stopped" in res.stdout, res.stdout
        assert "p1: replaced, checked out at " + sha[:12] in res.stdout, res.stdout
        new = json.loads((cp.root / ".podflow" / "session-p1.json").read_text())["pod_id"]
        assert new != old and cp.api.pods[str(old)].fake.destroyed and len(cp.live_pods()) == 2
        final = json.loads((cp.root / ".podflow" / "pool-sweep.json").read_text())
        moved = [r for r, a in final["attempts"].items() if a == 2]
        assert moved and all(placed[r] == "p1" for r in moved), (placed, final)
        doc = json.loads(ok("sweep-status", "--json").stdout)
        assert doc["counts"] == {"success": 6}, doc  # the run that ended ok on the old p1 too
        runs = {r["id"]: r for r in doc["runs"]}
        assert all(runs[r]["attempt"] == 2 for r in moved)
        for r in ok_before:  # ended ok on the old p1: not run again, still success
            assert r not in moved and (runs[r]["state"], runs[r]["pod"]) == ("success", "p1")
