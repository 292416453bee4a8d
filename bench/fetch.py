"""fetch-run throughput vs raw rsync of the same tree over loopback ssh, and a re-fetch
after one file changed.  Run: ``.venv/bin/python bench/fetch.py [--mb 200 --files 1000]``.

Needs root, /usr/sbin/sshd (tests/sshd.py starts a private one). Target: fetch-run
reaches >= 0.8x the raw rsync throughput.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import sshd  # noqa: E402

from workflow import runtime  # noqa: E402
from workflow.config import load_config  # noqa: E402
from workflow.sweep.fetch import Fetcher  # noqa: E402
from workflow.agent_client import AgentClient  # noqa: E402
from workflow.transport.ssh import open_ssh_transport  # noqa: E402
from workflow.transport.sshconfig import resolve_ssh_endpoint  # noqa: E402  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with sshd.pod_context() as pod:
        project = Path(tempfile.mkdtemp(prefix="podflow-bench-"))
        (project / "configs").mkdir()
        pod.write_config(project)
        cfg = load_config(cwd=project)
        outputs = pod.remote_dir / "outputs"
        run = outputs / "bench"
        run.mkdir(parents=True)
        (run / "status.json").write_text('{"state": "success"}')
        size = args.mb * 1_000_000 // args.files
        for i in range(args.files):
            p = run / f"d{i % 10}" / f"f{i:05d}.bin"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(os.urandom(size))
        subprocess.run(["chown", "-R", f"{pod.uid}:{pod.gid}", str(outputs)], check=True)
        t = open_ssh_transport(cfg, resolve_ssh_endpoint(cfg))
        agent = AgentClient(t, str(outputs))
        shell = shlex.join(t.rsync_remote_shell())
        agent.call("run.manifest", runs=["bench"], files=False)  # install the agent, warm up

        raw_times, fetch_times, nosha_times = [], [], []
        for _ in range(args.repeat):
            dest = project / "raw"
            shutil.rmtree(dest, ignore_errors=True)
            t0 = time.monotonic()
            subprocess.run(["rsync", "-a", "--partial", "--modify-window=-1", "-e", shell,
                            t.rsync_target(str(run) + "/"), f"{dest}/"], check=True)
            raw_times.append(time.monotonic() - t0)

            arts = project / "artifacts"
            shutil.rmtree(arts, ignore_errors=True)
            f = Fetcher(t, agent, str(outputs), arts, config=None, sha256=True)
            t0 = time.monotonic()
            res = f.fetch_run("bench")
            fetch_times.append(time.monotonic() - t0)
            assert res.runs[0].complete and res.rsync.files_transferred == args.files + 1
            shutil.rmtree(arts, ignore_errors=True)
            t0 = time.monotonic()
            Fetcher(t, agent, str(outputs), arts).fetch_run("bench")
            nosha_times.append(time.monotonic() - t0)

        victim = run / "d3" / "f00003.bin"
        victim.write_bytes(os.urandom(size))
        t0 = time.monotonic()
        subprocess.run(["rsync", "-a", "--partial", "--modify-window=-1", "-e", shell,
                        t.rsync_target(str(run) + "/"), f"{project / 'raw'}/"], check=True)
        raw_re = time.monotonic() - t0
        victim.write_bytes(os.urandom(size))
        t0 = time.monotonic()
        res = f.fetch_run("bench")
        fetch_re = time.monotonic() - t0
        assert res.rsync.files_transferred == 1, res.rsync

        raw, fet = min(raw_times), min(fetch_times)
        mb = args.mb
        print(f"tree: {mb} MB in {args.files} files, loopback ssh")
        print(f"raw rsync:  {raw:.2f} s  ({mb / raw:.0f} MB/s)")
        ns = min(nosha_times)
        print(f"fetch-run:  {ns:.2f} s  ({mb / ns:.0f} MB/s)  (1 agent call + rsync + sizes/mtimes checked)")
        print(f"throughput ratio fetch/raw: {raw / ns:.2f}x  (target >= 0.8)")
        print(f"fetch-run --sha256 (SHA-256 of every file on both sides): {fet:.2f} s, ratio {raw / fet:.2f}x")
        print(f"re-fetch after one file changed: raw rsync {raw_re:.2f} s, fetch-run {fetch_re:.2f} s "
              f"(ratio {raw_re / fetch_re:.2f}x), files transferred {res.rsync.files_transferred}")
        t.close()
        runtime.reset()
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
