"""The watchdog on the pod (SPEC §10) for real: started by ``pod-up``, it stops an idle
pod through the fake RunPod/Vast API with the pod-scoped credential the provider put
into the pod (never the account key), keeps a busy pod alive, turns ``destroy`` into
``stop`` while runs are unfetched, ends a pod over budget, and runs an ssh pod's
``autostop.command``."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from fakes.harness import SECRET, CloudProject
from test_money import offer

pytestmark = pytest.mark.ssh


def wait_until(pred, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cloud(tmp_path, ssh_client_keys, ssh_session_dir):
    made = []

    def make(kind, autostop=None, price=0.5, **pod):
        cp = CloudProject(kind, tmp_path / f"proj-{len(made)}", ssh_client_keys, ssh_session_dir, [offer(kind, price)],
                          **pod)
        if autostop:
            cp.config["autostop"] = autostop
            cp.write_config()
        made.append(cp)
        return cp

    yield make
    for cp in made:
        cp.close()


def the_pod(cp):
    [pod] = cp.api.pods.values()
    return pod


def control(cp, name):
    path = cp.remote / "outputs" / "_control" / name
    return json.loads(path.read_text()) if path.exists() else None


def requests_with(cp, method, path_part):
    return [(m, p, b, h) for m, p, b, h in cp.api.requests if m == method and path_part in p]


def pod_processes(uid):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    out.append((int(entry.name), (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()))
            except OSError:
                continue
    return out


@pytest.mark.parametrize("kind", ["runpod", "vastai"])
def test_idle_pod_is_stopped_with_the_pod_scoped_credential(cloud, kind):
    cp = cloud(kind, {"idle_minutes": 0.25, "action": "stop"})  # 15 s
    r = cp.wf("pod-up")
    assert r.returncode == 0, r.stderr
    assert "watchdog on the pod" in r.stderr
    pod = the_pod(cp)
    pid = int((cp.remote / "outputs" / "_control" / "autostop.pid").read_text().split()[0])

    # the account key is nowhere on the pod: not in its files, its processes' env or command lines
    secret = SECRET[kind].encode()
    procs = pod_processes(pod.fake.sshd.uid)
    assert pid in [p for p, _, _ in procs], "the watchdog runs on the pod"
    assert not [p for p, env, cmd in procs if secret in env or secret in cmd]
    for path in cp.remote.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path

    st = json.loads(cp.wf("pod-status", "--json").stdout)
    log = (cp.remote / "outputs" / "_control" / "autostop.log").read_text()
    assert st["autostop"]["running"] and st["autostop"]["action"] == "stop", (st, log)
    assert 0 < st["autostop"]["acts_in_secs"] <= 15.5

    wait_until(lambda: pod.fake.stopped, 60, "the watchdog to stop the pod")
    assert not pod.fake.destroyed
    decision = control(cp, "autostop.json")
    assert decision["action"] == "stop" and decision["reason"].startswith("idle") and decision["credential"] == "pod"
    if kind == "runpod":
        calls = requests_with(cp, "POST", f"/v2/pods/{pod.id}/action")
        scoped = f"Bearer {pod.pod_key}"
    else:
        calls = requests_with(cp, "PUT", f"/api/v0/instances/{pod.id}/")
        scoped = f"Bearer {pod.container_key}"
    stops = [h for _, _, b, h in calls if b in ({"action": "stop"}, {"state": "stopped"})]
    assert stops and all(h.get("Authorization") == scoped for h in stops)
    doc = json.loads(cp.wf("cost", "--json").stdout)
    assert doc["pods"][0]["state"] == "stopped"  # noticed at the next command


def _fake_run(cp, run_id):
    """A finished run on the pod, as the sweep runner leaves it."""
    d = cp.remote / "outputs" / run_id
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"id": run_id, "state": "success", "exit_code": 0, "attempt": 1,
                                               "finished_at": "2026-01-01T00:00:00Z"}))
    (d / "summary.json").write_text(json.dumps({"ok": True, "exit_code": 0}))
    (d / "stdout.log").write_text("done\n")
    for p in [cp.remote, *cp.remote.rglob("*")]:
        os.chown(p, pod_uid(), pod_gid())


def pod_uid():
    import pwd

    return pwd.getpwnam("wftest").pw_uid


def pod_gid():
    import pwd

    return pwd.getpwnam("wftest").pw_gid


def test_unfetched_runs_turn_destroy_into_stop(cloud):
    cp = cloud("runpod", {"idle_minutes": 0.02, "action": "destroy"})
    _fake_run(cp, "r1")
    assert cp.wf("pod-up").returncode == 0
    pod = the_pod(cp)
    wait_until(lambda: pod.fake.stopped, 60, "the watchdog to stop the pod")
    assert not pod.terminated
    decision = control(cp, "autostop.json")
    assert decision["action"] == "stop" and "never fetched (r1)" in decision["reason"]


def test_fetched_runs_let_destroy_happen(cloud):
    cp = cloud("runpod", {"idle_minutes": 0.15, "action": "destroy"})  # 9 s: time to fetch
    _fake_run(cp, "r1")
    assert cp.wf("pod-up").returncode == 0
    r = cp.wf("fetch-all")
    assert r.returncode == 0, r.stderr
    assert "r1" in json.loads((cp.remote / "outputs" / "_control" / "fetched.json").read_text())
    pod = the_pod(cp)
    decision = wait_until(lambda: control(cp, "autostop.json"), 60, "the decision")
    assert decision["action"] == "destroy", decision
    wait_until(lambda: pod.terminated, 30, "the pod to be destroyed")
    doc = json.loads(cp.wf("cost", "--json").stdout)
    assert doc["pods"][0]["state"] == "gone"


def test_budget_reached_ends_the_pod(cloud):
    cp = cloud("runpod", {"action": "stop"}, price=36.0, max_cost_usd=0.03)  # $0.01 a second
    assert cp.wf("pod-up").returncode == 0
    pod = the_pod(cp)
    wait_until(lambda: pod.fake.stopped, 60, "the watchdog to stop the pod over budget")
    assert control(cp, "autostop.json")["reason"].startswith("budget")


def test_the_pools_budget_ends_every_pod_of_the_pool(project):
    """pod.max_cost_usd is the pool's: each pod's watchdog counts every pod's price (two
    local pods at $1/s each: the pool spends $2/s), so all of them end; then pod-up
    refuses to bring the pool up again."""
    from test_pod_tasks import wf

    ran = project / "autostop-ran"
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump({
        "project": "budget", "pod": {"provider": "local", "count": 2, "price_per_hour": 3600.0, "max_cost_usd": 20},
        "autostop": {"action": "command", "command": f"echo ended >> {ran}"}}))
    outputs = [project / ".podflow" / "local-pod" / name for name in ("outputs", "outputs-p1")]
    try:
        r = wf(project, "pod-up")
        assert r.returncode == 0, r.stderr
        assert "p0: watchdog on the pod" in r.stderr and "p1: watchdog on the pod" in r.stderr
        wait_until(lambda: ran.exists() and ran.read_text().count("ended") == 2, 90, "both pods to end")
        for out in outputs:
            decision = json.loads((out / "_control" / "autostop.json").read_text())
            assert decision["action"] == "command", decision
            assert decision["reason"].startswith("budget: the pool (2 running pod(s) at $7200.0000/h)"), decision
        r = wf(project, "pod-up")
        assert r.returncode == 2 and "pod.max_cost_usd is $20.00" in r.stderr, r.stderr
    finally:
        for out in outputs:
            pid_file = out / "_control" / "autostop.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (OSError, ValueError):
                    pass


def test_ssh_pod_runs_the_command_and_a_running_task_keeps_it_alive(ssh_pod, project):
    marker = ssh_pod.remote_dir / "autostop-ran"
    ssh_pod.write_config(project, checkout={"require_cuda": False},
                         autostop={"idle_minutes": 0.05, "action": "command",  # 3 s
                                            "command": f"touch {marker}"})
    from test_pod_tasks import wf

    r = wf(project, "task-run", "--id", "busy", "--cmd", "sleep 15")
    assert r.returncode == 0, r.stderr
    r = wf(project, "pod-up")
    assert r.returncode == 0, r.stderr
    outputs = ssh_pod.remote_dir / "outputs"
    st = json.loads(wf(project, "pod-status", "--json").stdout)["autostop"]
    assert st["running"] and "busy" in (st["not_yet"] or "")
    text = wf(project, "pod-status").stdout
    assert "autostop: command" in text and "not yet: busy: _tasks/busy" in text, text
    wait_until(marker.exists, 60, "autostop.command to run")
    status = json.loads((outputs / "_tasks" / "busy" / "status.json").read_text())
    assert status["state"] == "success"  # it ran to its end: nothing stopped it
    from datetime import datetime

    finished = datetime.fromisoformat(status["finished_at"].replace("Z", "+00:00")).timestamp()
    assert marker.stat().st_mtime >= finished + 2.5  # idle for autostop.idle_minutes after the task
    decision = json.loads((outputs / "_control" / "autostop.json").read_text())
    assert decision["action"] == "command" and decision["reason"].startswith("idle")


def test_a_running_sweep_keeps_the_local_pod_alive(project):
    from test_sweep_run_helpers import SweepProject

    marker = project / "autostop-ran"
    sp = SweepProject(project, {"autostop": {"idle_minutes": 0.01, "action": "command",
                                             "command": f"touch {marker}"}},
                      """\
                      run_id,config,seed,overrides,notes
                      a,configs/tiny.json,0,steps=6 sleep=0.5,
                      b,configs/tiny.json,1,steps=6 sleep=0.5,
                      """)
    sp.wf("sweep-start", check=0)
    from workflow import runtime
    from workflow.money.watchdog import launch_current

    runtime.reset()
    try:
        started = launch_current(runtime.config(), runtime.agent())
        assert started["running"]
        while sp.raw_status()["state"] == "running":
            assert not marker.exists(), "the watchdog acted while the sweep ran"
            time.sleep(0.1)
        wait_until(marker.exists, 30, "autostop.command after the sweep")
        assert json.loads((sp.outputs / "_control" / "autostop.json").read_text())["action"] == "command"
    finally:
        pid_file = sp.outputs / "_control" / "autostop.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass


def test_lium_acts_only_with_the_account_key_allowed(cloud):
    """Lium puts no pod-scoped key into its pods: without autostop.allow_account_key the
    watchdog cannot act (and says so); with it, it destroys through the API."""
    cp = cloud("lium", {"idle_minutes": 0.02, "action": "destroy"})
    assert cp.wf("pod-up").returncode == 0
    decision = wait_until(lambda: control(cp, "autostop.json"), 60, "the decision")
    assert decision["action"] == "none" and "allow_account_key" in decision["error"]
    assert cp.live_pods()
    st = json.loads(cp.wf("pod-status", "--json").stdout)
    assert st["autostop"]["decision"]["action"] == "none"
    assert "autostop: none" in cp.wf("pod-status").stdout

    cp.config["autostop"]["allow_account_key"] = True
    cp.write_config()
    r = cp.wf("bootstrap")  # bootstrap restarts the watchdog with the config of now
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not cp.live_pods(), 60, "the watchdog to destroy the pod")
    deletes = requests_with(cp, "DELETE", "/api/pods/")
    assert deletes and {k.lower(): v for k, v in deletes[-1][3].items()}["x-api-key"] == SECRET["lium"]
    assert control(cp, "autostop.json")["credential"] == "account"


def test_ttl_ends_the_pod_the_same_way(project):
    from test_pod_tasks import wf

    marker = project / "ttl-ran"
    (project / "configs" / "workflow.yaml").write_text(yaml.safe_dump({
        "project": "ttl", "pod": {"provider": "local", "ttl": 2},
        "autostop": {"action": "command", "command": f"touch {marker}"}}))
    assert wf(project, "pod-up").returncode == 0
    wait_until(marker.exists, 60, "the ttl to end the pod")
    decision = json.loads((project / ".podflow" / "local-pod" / "outputs" / "_control" / "autostop.json").read_text())
    assert decision["action"] == "command" and decision["reason"].startswith("ttl")


def test_a_busy_gpu_keeps_the_pod_alive(ssh_pod, project):
    """nvidia-smi says a GPU works (a notebook, a process outside podflow): not idle."""
    bin_dir = ssh_pod.remote_dir / "bin"
    bin_dir.mkdir()
    flag = ssh_pod.remote_dir / "gpu-busy"
    flag.write_text("")
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"""#!/bin/sh
case "$*" in *utilization.gpu*) if [ -e {flag} ]; then echo 87; else echo 0; fi;; *) exit 9;; esac
""")
    smi.chmod(0o755)
    for p in (bin_dir, flag, smi):
        os.chown(p, ssh_pod.uid, ssh_pod.gid)
    ssh_pod.prepend_path(bin_dir)
    ssh_pod.restart()
    marker = ssh_pod.remote_dir / "autostop-ran"
    ssh_pod.write_config(project, checkout={"require_cuda": False},
                         autostop={"idle_minutes": 0.03, "action": "command", "command": f"touch {marker}"})
    from test_pod_tasks import wf

    assert wf(project, "pod-up").returncode == 0
    time.sleep(4)
    st = json.loads(wf(project, "pod-status", "--json").stdout)["autostop"]
    assert not marker.exists() and "gpu 0 at or over 5%" in st["not_yet"]
    flag.unlink()
    wait_until(marker.exists, 60, "the watchdog once the GPU is idle")
    decision = json.loads((ssh_pod.remote_dir / "outputs" / "_control" / "autostop.json").read_text())
    assert "every GPU under 5%" in decision["reason"]
