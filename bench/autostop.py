"""The watchdog's own cost on the pod, and how fast it reacts once idleness is due.

    .venv/bin/python bench/autostop.py [--secs 60] [--runs 1000]

Over the ``local`` transport with ``/usr/bin/python3`` (a plain pod python):

* ``cpu``: the real daemon (``autostop.start``) watching an outputs dir holding N finished
  runs and a running task, for ``--secs`` seconds with an idle limit it never reaches;
  its CPU time (utime + stime from ``/proc``) scaled to seconds per hour (target <= 5 s/h);
* ``reaction``: a tracked task ends; the watchdog (``idle_minutes`` 0.05 = 3 s, action
  ``command`` writing a timestamp) acts; the figure is how long after
  ``finished_at + idle`` it ran (target <= 15 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflow.agent_client import AgentClient  # noqa: E402
from workflow.transport.local import LocalTransport  # noqa: E402

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _runs(outputs: Path, n: int) -> None:
    for i in range(n):
        d = outputs / f"run-{i:04d}"
        d.mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"id": d.name, "state": "success", "exit_code": 0, "attempt": 1,
                                                   "started_at": "2026-01-01T00:00:01Z",
                                                   "finished_at": "2026-01-01T00:00:02Z"}))


def _cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cpu(base: Path, secs: float, runs: int) -> float:
    outputs = base / "cpu"
    _runs(outputs, runs)
    agent = AgentClient(LocalTransport(), str(outputs), python=PY)
    agent.call("task.run", id="busy", command="sleep %d" % (secs + 30), session="bench-autostop")
    started = agent.call("autostop.start", provider="local", pod_id="local", action="command", command="true",
                         idle_secs=3600.0)
    pid = started["pid"]
    time.sleep(2)  # past its start-up (imports, first scan)
    c0, t0 = _cpu_secs(pid), time.monotonic()
    time.sleep(secs)
    used, took = _cpu_secs(pid) - c0, time.monotonic() - t0
    agent.call("autostop.stop")
    agent.call("task.kill", id="busy")
    return used / took * 3600.0


def reaction(base: Path) -> float:
    outputs = base / "react"
    outputs.mkdir(parents=True)
    marker = base / "acted"
    agent = AgentClient(LocalTransport(), str(outputs), python=PY)
    agent.call("task.run", id="work", command="sleep 2", session="bench-autostop")
    agent.call("autostop.start", provider="local", pod_id="local", action="command", idle_secs=3.0,
               command=f"date +%s.%N > {marker}")
    end = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < end:
        time.sleep(0.05)
    acted = float(marker.read_text())
    finished = _ts(json.loads((outputs / "_tasks" / "work" / "status.json").read_text())["finished_at"])
    return acted - (finished + 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-autostop-"))
    try:
        per_hour = cpu(base, args.secs, args.runs)
        print(f"cpu: {per_hour:.2f} CPU s/h watching {args.runs} finished runs and a running task "
              f"for {args.secs:.0f} s (target <= 5)")
        late = reaction(base)
        print(f"reaction: acted {late:.2f} s after idle_minutes was due (target <= 15)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
