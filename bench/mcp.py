"""MCP bench: ``sweep_status`` through ``wf mcp`` (kept connection) against a fresh
``wf sweep-status --json`` process, on a loopback sshd pod holding a finished sweep.

    .venv/bin/python bench/mcp.py [--runs 100] [--calls 30] [--fresh 5]

Prints one JSON document: the median latency of ``sweep_status`` through the server
after its first call (target <= 60 ms at 100 runs), the first call (connect + agent
check), the SSH logins sshd saw during the timed calls (target: 0), and for comparison
a fresh CLI process and the limit: the same read in this process on a kept connection. Needs root and /usr/sbin/sshd (tests/sshd.py).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
# this file is named mcp.py: its directory must not shadow the SDK's package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import sshd  # noqa: E402
from test_sweep_run_helpers import checkout_on_ssh_pod  # noqa: E402

WF = str(Path(sys.executable).with_name("wf"))


def _wf(project: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([WF, *args], cwd=project, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"wf {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _logins(pod) -> int:
    return (pod.dir / "sshd.log").read_text(errors="replace").count("Accepted ")


async def _through_server(project: Path, pod, calls: int) -> dict:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=WF, args=["mcp", "--project", str(project)],
                                   env={"HOME": os.environ["HOME"]})
    with open(os.devnull, "w") as quiet:
        async with stdio_client(params, errlog=quiet) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                t0 = time.perf_counter()
                first = await session.call_tool("sweep_status", {})
                first_s = time.perf_counter() - t0
                assert not first.is_error, first.structured_content
                logins = _logins(pod)
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    res = await session.call_tool("sweep_status", {})
                    times.append(time.perf_counter() - t0)
                    assert not res.is_error and len(res.structured_content["runs"]) > 0
                return {"first_call_s": round(first_s, 3), "median_ms": round(statistics.median(times) * 1000, 1),
                        "p90_ms": round(sorted(times)[int(len(times) * 0.9) - 1] * 1000, 1),
                        "new_ssh_logins": _logins(pod) - logins, "calls": calls}


def _floor(project: Path, calls: int) -> dict:
    """The same status read in this process on one kept connection, no server: the limit."""
    from workflow import runtime
    from workflow.sweep.control import sweep_status

    cwd = os.getcwd()
    os.chdir(project)
    try:
        agent = runtime.agent()
        sweep_status(agent)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            sweep_status(agent)
            times.append(time.perf_counter() - t0)
    finally:
        runtime.reset()
        os.chdir(cwd)
    return {"median_ms": round(statistics.median(times) * 1000, 1), "calls": calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--fresh", type=int, default=5)
    opts = ap.parse_args()
    compileall.compile_dir(str(ROOT / "workflow"), quiet=1)  # as installed: no compiling at each start
    with tempfile.TemporaryDirectory(prefix="podflow-bench-mcp-") as tmp, sshd.pod_context() as pod:
        project = Path(tmp) / "project"
        (project / "sweeps").mkdir(parents=True)
        pod.write_config(project, checkout={"require_cuda": False},
                         sweep={"csv": "sweeps/sweep.csv", "workdir": "examples", "launcher": "python",
                                "entrypoint": "job.py", "args": ["{config}", "--seed={seed}"]})
        rows = "".join(f"r{i:03d},configs/tiny.json,{i},steps=1 sleep=0.01,\n" for i in range(opts.runs))
        (project / "sweeps" / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n" + rows)
        checkout_on_ssh_pod(pod)
        _wf(project, "fsm-reset", "CHECKED_OUT", "--reason", "bench")
        _wf(project, "sweep-start")
        _wf(project, "sweep-wait", "--timeout-secs", "600")
        fresh = []
        for _ in range(opts.fresh):
            t0 = time.perf_counter()
            _wf(project, "sweep-status", "--json")
            fresh.append(time.perf_counter() - t0)
        server = anyio.run(_through_server, project, pod, opts.calls)
        floor = _floor(project, opts.calls)
        server["overhead_over_limit_ms"] = round(server["median_ms"] - floor["median_ms"], 1)
        print(json.dumps({"runs": opts.runs, "mcp_sweep_status": server, "in_process_kept_connection": floor,
                          "fresh_wf_sweep_status_json": {"median_ms": round(statistics.median(fresh) * 1000, 1),
                                                         "calls": opts.fresh},
                          "target_ms": 60}, indent=2))


if __name__ == "__main__":
    main()
