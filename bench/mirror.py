"""What the resume mirror of ``sweep-wait`` costs per tick (SPEC §8).

    sudo .venv/bin/python bench/mirror.py [--runs 8] [--files 50] [--ckpt-mb 64]

Starts its own sshd on loopback (``tests/sshd.py``; needs root) and fills the pod's
outputs with RUNS running runs of FILES small files and one checkpoint of CKPT_MB each.
Prints the seconds of one mirror tick (``workflow.sweep.mirror.Mirror``: one rsync for
all the runs) when everything is new, when nothing changed, and when every run rewrote
its checkpoint; the first against a plain ``rsync -a`` of the same dirs (the limit: the
mirror is that rsync plus its bookkeeping). Target: a tick with nothing changed well
under a second, so a 60 s interval costs the wait nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import sshd  # noqa: E402


def fill(outputs: Path, runs: int, files: int, ckpt_mb: int, uid: int, gid: int) -> None:
    for i in range(runs):
        d = outputs / f"r{i}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(files):
            (d / f"f{j}.json").write_text('{"step": %d}\n' % j * 20)
        (d / "checkpoint.pt").write_bytes(os.urandom(ckpt_mb << 20))
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(outputs)], check=True)


def tick(mirror, status) -> float:
    started = time.perf_counter()
    assert mirror.tick(status)
    mirror.close(wait_secs=3600)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--ckpt-mb", type=int, default=64)
    args = ap.parse_args()

    from workflow.sweep.control import RunState, SweepStatus
    from workflow.sweep.mirror import Mirror
    from workflow.transport.endpoint import Endpoint
    from workflow.transport.ssh import SshTransport

    work = Path(tempfile.mkdtemp(prefix="podflow-bench-mirror-"))
    try:
        with sshd.pod_context() as pod:
            outputs = pod.remote_dir / "outputs"
            fill(outputs, args.runs, args.files, args.ckpt_mb, pod.uid, pod.gid)
            total_mb = args.runs * args.ckpt_mb
            t = SshTransport(Endpoint(pod.host, pod.port, pod.user), known_hosts=work / "known_hosts",
                             identity_file=pod.key_path)
            t.run(["true"])  # connect and pin the host key outside the timing
            status = SweepStatus(state="running", counts={}, percent=0.0, runs=tuple(
                RunState(id=f"r{i}", state="running", dir=str(outputs / f"r{i}")) for i in range(args.runs)))
            mirror = Mirror(t, work / "artifacts", 0.001)
            first = tick(mirror, status)
            same = tick(mirror, status)
            for i in range(args.runs):
                (outputs / f"r{i}" / "checkpoint.pt").write_bytes(os.urandom(args.ckpt_mb << 20))
            changed = tick(mirror, status)
            plain_dest = work / "plain"
            started = time.perf_counter()
            subprocess.run(["rsync", "-a", "-e", " ".join(t.rsync_remote_shell()),
                            t.rsync_target(str(outputs) + "/"), f"{plain_dest}/"], check=True)
            plain = time.perf_counter() - started
            assert mirror.errors == 0
            t.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"mirror of {args.runs} running runs ({args.files} small files + a {args.ckpt_mb} MB checkpoint each, "
          f"{total_mb} MB) over loopback ssh:")
    print(f"  everything new:        {first:6.2f} s ({total_mb / first:.0f} MB/s; plain rsync -a: {plain:.2f} s)")
    print(f"  nothing changed:       {same:6.2f} s")
    print(f"  every checkpoint new:  {changed:6.2f} s")


if __name__ == "__main__":
    main()
