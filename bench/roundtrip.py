"""Round-trip cost of one remote command, and the CLI's cold start.

    sudo .venv/bin/python bench/roundtrip.py [-n 100] [--repeats 5]

Starts its own sshd on loopback (``tests/sshd.py``; needs root) and prints, for N
commands on one open connection: ``SshTransport.run(["true"])`` vs a raw paramiko exec
(TCP_NODELAY on) vs ``ssh`` reusing a ControlMaster; then the median cold start of
``wf --help`` and ``invoke --list``. Targets: transport <= 2x raw paramiko; cold start
<= 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import sshd  # noqa: E402


def bench_transport(pod, n: int, workdir: Path) -> float:
    from workflow.transport.endpoint import Endpoint
    from workflow.transport.ssh import SshTransport

    t = SshTransport(Endpoint(pod.host, pod.port, pod.user), known_hosts=workdir / "known_hosts",
                     identity_file=pod.key_path)
    t.run(["true"])  # connect + pin outside the timing
    started = time.perf_counter()
    for _ in range(n):
        assert t.run(["true"]).ok
    took = time.perf_counter() - started
    t.close()
    return took


def bench_paramiko(pod, n: int) -> float:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(pod.host, pod.port, pod.user, key_filename=str(pod.key_path), look_for_keys=False,
                   allow_agent=False)
    client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = client.get_transport()
    started = time.perf_counter()
    for _ in range(n):
        chan = transport.open_session()
        chan.exec_command("true")
        assert chan.recv_exit_status() == 0
        chan.close()
    took = time.perf_counter() - started
    client.close()
    return took


def bench_controlmaster(pod, n: int, workdir: Path) -> float:
    control = workdir / "cm.sock"
    base = ["ssh", "-F", "/dev/null", "-p", str(pod.port), "-i", str(pod.key_path), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={workdir / 'kh_ssh'}",
            "-o", f"ControlPath={control}", f"{pod.user}@{pod.host}"]
    subprocess.run(base[:-1] + ["-o", "ControlMaster=yes", "-o", "ControlPersist=60", "-N", "-f", base[-1]],
                   check=True, capture_output=True)
    try:
        started = time.perf_counter()
        for _ in range(n):
            subprocess.run(base + ["true"], check=True, capture_output=True)
        return time.perf_counter() - started
    finally:
        subprocess.run(base[:-1] + ["-O", "exit", base[-1]], capture_output=True)


def cold_start(argv, repeats: int, cwd: Path) -> float:
    times = []
    env = dict(os.environ, HOME=str(cwd))
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="commands per method (default 100)")
    ap.add_argument("--repeats", type=int, default=5, help="cold-start runs, median reported (default 5)")
    args = ap.parse_args()
    bindir = Path(sys.executable).parent
    workdir = Path(tempfile.mkdtemp(prefix="podflow-bench-"))
    try:
        with sshd.pod_context() as pod:
            t_transport = bench_transport(pod, args.n, workdir)
            t_raw = bench_paramiko(pod, args.n)
            t_cm = bench_controlmaster(pod, args.n, workdir)
        n = args.n
        print(f"{n} x 'true' on one open connection (loopback sshd):")
        print(f"  SshTransport.run        {t_transport:7.3f} s  {t_transport / n * 1000:6.2f} ms/cmd  "
              f"{t_transport / t_raw:5.2f}x raw paramiko  (target <= 2x)")
        print(f"  raw paramiko exec       {t_raw:7.3f} s  {t_raw / n * 1000:6.2f} ms/cmd   1.00x")
        print(f"  ssh + ControlMaster     {t_cm:7.3f} s  {t_cm / n * 1000:6.2f} ms/cmd  {t_cm / t_raw:5.2f}x raw paramiko"
              f"  (transport is {t_cm / t_transport:.1f}x faster)")
        # cold start from a directory without a config (the REPO's tasks.py for invoke)
        empty = workdir / "empty"
        empty.mkdir()
        wf_help = cold_start([str(bindir / "wf"), "--help"], args.repeats, empty)
        inv_list = cold_start([str(bindir / "invoke"), "--list"], args.repeats, REPO)
        print(f"cold start (median of {args.repeats}):")
        print(f"  wf --help               {wf_help:7.3f} s  (target <= 0.5 s)")
        print(f"  invoke --list           {inv_list:7.3f} s  (target <= 0.5 s)")
        ok = t_transport <= 2 * t_raw and wf_help <= 0.5 and inv_list <= 0.5
        print("targets:", "met" if ok else "NOT met")
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
