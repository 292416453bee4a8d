"""Tracked tasks: run->wait latency, task-list at scale, round trips per command.

    .venv/bin/python bench/tasks.py [--runs 10] [--list-n 1000] [--no-ssh]

Figures, over the ``local`` transport and over loopback ssh (a private sshd from
tests/sshd.py, as the test user):

* ``run+wait``: from ``start_task(..., "true")`` to ``wait_task`` returning, connection
  already set up (target <= 0.5 s); the connect time is printed apart;
* ``list N``: ``list_tasks`` over N task directories (one exec);
* round trips (remote execs, ``AgentClient.calls``) per command.

The local agent runs with ``/usr/bin/python3`` (a plain pod python; this machine's
``python3`` is a pyenv shim that adds ~0.2 s to every exec).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from workflow import tracked  # noqa: E402
from workflow.agent import procs  # noqa: E402
from workflow.agent_client import AgentClient  # noqa: E402

SETTINGS = tracked.TaskSettings(session="bench-tasks")


def _bulk(tasks_root: Path, n: int, chown=None) -> None:
    tasks_root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        d = tasks_root / f"bulk-{i:04d}"
        d.mkdir()
        doc = {"id": d.name, "state": "success", "exit_code": 0, "command": f"echo {i}",
               "created_at": "2026-01-01T00:00:00.%06dZ" % i, "started_at": "2026-01-01T00:00:01Z",
               "finished_at": "2026-01-01T00:00:02Z", "timeout_secs": None, "pid": 1, "heartbeat_at": None,
               "attempt": 1}
        (d / "status.json").write_text(json.dumps(doc))
        if chown:
            chown(d)
            chown(d / "status.json")


def measure(agent: AgentClient, label: str, runs: int, list_n: int, tasks_root: Path, chown=None) -> dict:
    t0 = time.monotonic()
    agent.call("task.list")  # first call: installs the agent if needed, connects
    connect = time.monotonic() - t0
    lat = []
    for i in range(runs):
        t0 = time.monotonic()
        tracked.start_task(agent, f"true-{i}", "true", settings=SETTINGS)
        tracked.wait_task(agent, f"true-{i}")
        lat.append(time.monotonic() - t0)
    calls = {}
    for name, fn in [
        ("task-run", lambda: tracked.start_task(agent, "rt", "sleep 0.2", settings=SETTINGS)),
        ("task-status", lambda: tracked.task_status(agent, "rt")),
        ("task-list", lambda: tracked.list_tasks(agent)),
        ("task-wait", lambda: tracked.wait_task(agent, "rt")),
        ("task-logs", lambda: tracked.task_logs(agent, "rt", sink=lambda t: None)),
        ("task-logs --follow", lambda: tracked.task_logs(agent, "rt", follow=True, sink=lambda t: None)),
        ("task-kill", lambda: tracked.kill_task(agent, "rt")),
    ]:
        agent.calls = 0
        fn()
        calls[name] = agent.calls
    _bulk(tasks_root, list_n, chown)
    list_t = []
    for _ in range(3):
        agent.calls = 0
        t0 = time.monotonic()
        rows = tracked.list_tasks(agent)
        list_t.append(time.monotonic() - t0)
        assert agent.calls == 1
    out = {
        "transport": label,
        "connect_and_first_call_s": round(connect, 3),
        "run_wait_true_median_s": round(statistics.median(lat), 3),
        "run_wait_true_max_s": round(max(lat), 3),
        f"list_{len(rows)}_median_s": round(statistics.median(list_t), 3),
        "round_trips": calls,
    }
    print(json.dumps(out, indent=2))
    return out


def bench_local(runs: int, list_n: int) -> None:
    from workflow.transport.local import LocalTransport

    base = Path(tempfile.mkdtemp(prefix="podflow-bench-tasks-"))
    outputs = base / "outputs"
    agent = AgentClient(LocalTransport(), str(outputs),
                        python="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3")
    try:
        measure(agent, "local", runs, list_n, outputs / "_tasks")
    finally:
        os.system(f"tmux -L {procs.tmux_socket_name(str(outputs))} kill-server 2>/dev/null")
        shutil.rmtree(base, ignore_errors=True)


def bench_ssh(runs: int, list_n: int) -> None:
    import sshd

    from workflow.config import load_config
    from workflow.transport.ssh import open_ssh_transport
    from workflow.transport.sshconfig import resolve_ssh_endpoint

    with sshd.pod_context() as pod:
        project = Path(tempfile.mkdtemp(prefix="podflow-bench-proj-"))
        pod.write_config(project)
        cfg = load_config(cwd=project)
        t0 = time.monotonic()
        transport = open_ssh_transport(cfg, resolve_ssh_endpoint(cfg))
        transport.run(["true"])
        print(f"ssh connect + first exec: {time.monotonic() - t0:.3f}s")
        agent = AgentClient(transport, cfg.remote.outputs_dir)
        try:
            measure(agent, "ssh (loopback)", runs, list_n, pod.remote_dir / "outputs" / "_tasks",
                    chown=lambda p: os.chown(p, pod.uid, pod.gid))
        finally:
            transport.close()
            shutil.rmtree(project, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--list-n", type=int, default=1000)
    ap.add_argument("--no-ssh", action="store_true")
    args = ap.parse_args()
    bench_local(args.runs, args.list_n)
    if not args.no_ssh:
        bench_ssh(args.runs, args.list_n)


if __name__ == "__main__":
    main()
