"""Warm commands bench: whole ``wf`` processes against a loopback pod, cold (a new SSH
login each) vs warm (through the pod's kept connection), and raw ``ssh`` through an
OpenSSH ControlMaster doing the same remote reads as the limit.

    .venv/bin/python bench/warm.py [--repeat 7] [--editable]

Commands: ``fsm-status``, ``task-list`` of 100 tasks, ``task-run`` -> ``task-wait`` of
``true``, ``sweep-status`` of 1000 runs (200 log lines each). Cold runs set
``WF__POD__KEEPALIVE_SECS=0``; warm ones find the kept connection and the warm CLI
server the first command left ("no zyg": warm, but ``WF_ZYGOTE=0``, so each ``wf``
imports the CLI itself). The ControlMaster limit reads the same files with ``cat`` (``task-run`` ->
``task-wait``: a detached ``sh`` writes its exit code, a second exec waits for it).
``wf`` is installed as a user installs it (``plain_install``), unless ``--editable``.
Prints medians in seconds and warm / ControlMaster ratios. Targets (warm): fsm-status
<= 0.12 s, task-list <= 0.08 s, task-run -> task-wait <= 0.35 s, sweep-status of 1000
runs <= 0.25 s: no slower than the ControlMaster on every command.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

WF = str(Path(sys.executable).with_name("wf"))


def timed(fn, repeat: int, other_cpu=lambda: 0.0):
    """Median (wall seconds, CPU seconds of the processes it ran and waited for, plus what
    ``other_cpu`` counted meanwhile), and the least wall seconds. The CPU figure, and the
    least wall time, grow less with the machine's load than the median wall time does."""
    times, cpus = [], []
    for _ in range(repeat):
        r0, o0 = resource.getrusage(resource.RUSAGE_CHILDREN), other_cpu()
        t0 = time.monotonic()
        fn()
        times.append(time.monotonic() - t0)
        r1, o1 = resource.getrusage(resource.RUSAGE_CHILDREN), other_cpu()
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime + o1 - o0)
    return statistics.median(times), statistics.median(cpus), min(times)


def reaped_cpu(pid: int) -> float:
    """CPU seconds of the children ``pid`` has reaped (the warm CLI server's commands)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _sibling(name: str):
    """Another bench script, as a module (by path: ``tasks``/``sweep`` are taken names)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def populate(outputs: Path, tasks: int, runs: int, chown) -> None:
    """``tasks`` finished tasks (as bench/tasks.py makes them) and a sweep of ``runs``."""
    _sibling("tasks")._bulk(outputs / "_tasks", tasks)
    _sibling("sweep").fake_sweep(outputs, runs)
    chown(outputs)


def plain_install(where: Path) -> str:
    """A ``wf`` as ``pip install podflow`` (not editable) gives: this venv's packages and
    the package on ``sys.path`` as plain paths, and pip's own console script. The dev
    venv's editable install adds an import hook that every python start loads (~15 ms)."""
    import sysconfig

    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "podflow.pth").write_text(f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n")
    script = Path(WF).read_text().split("\n", 1)[1]  # pip's console script, run by the new venv's python
    wf = venv / "bin" / "wf"
    wf.write_text(f"#!{venv / 'bin' / 'python'}\n{script}")
    wf.chmod(0o755)
    return str(wf)


def main() -> None:
    global WF
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--editable", action="store_true", help="time this venv's own wf (editable install) instead")
    args = ap.parse_args()
    installed = Path(tempfile.mkdtemp(prefix="podflow-bench-install-"))
    if not args.editable:
        WF = plain_install(installed)
    # An installed package has its bytecode; a checkout run with PYTHONDONTWRITEBYTECODE
    # would compile every module of `wf` on every start (~0.1 s of CPU): compile once.
    compileall.compile_dir(str(ROOT / "workflow"), quiet=1)
    import sshd

    from workflow.cli import zygote
    from workflow.config import load_config
    from workflow.transport.params import ssh_argv, ssh_params
    from workflow.transport.sshconfig import resolve_ssh_endpoint

    with sshd.pod_context() as pod:
        project = Path(tempfile.mkdtemp(prefix="podflow-bench-warm-"))
        try:
            pod.write_config(project)
            outputs = pod.remote_dir / "outputs"
            env_home = project / "home"
            env_home.mkdir()
            base_env = {**os.environ, "HOME": str(env_home)}
            cold_env = {**base_env, "WF__POD__KEEPALIVE_SECS": "0"}

            def wf(*argv, env=base_env, check=None):
                p = subprocess.run([WF, *argv], cwd=project, env=env, capture_output=True, text=True)
                if check is not None and p.returncode != check:
                    raise SystemExit(f"wf {' '.join(argv)}: rc={p.returncode}\n{p.stderr}")
                return p

            wf("fsm-status", env=cold_env, check=0)  # pins the host key, installs the agent
            populate(outputs, 100, 1000,
                     lambda p: subprocess.run(["chown", "-R", f"{pod.uid}:{pod.gid}", str(p)], check=True))
            n = [0]

            def run_wait(env):
                n[0] += 1
                wf("task-run", "--id", f"rw{n[0]}", "--cmd", "true", env=env, check=0)
                wf("task-wait", "--id", f"rw{n[0]}", env=env, check=0)

            cmds = {
                "fsm-status": lambda env: wf("fsm-status", "--json", env=env, check=0),
                "task-list (100)": lambda env: wf("task-list", "--json", env=env, check=0),
                "task-run -> task-wait": run_wait,
                "sweep-status (1000 runs)": lambda env: wf("sweep-status", "--json", env=env, check=0),
            }
            for fn in cmds.values():
                fn(cold_env)  # page cache, agent caches
            cold = {name: timed(lambda: fn(cold_env), args.repeat) for name, fn in cmds.items()}
            logins_before = pod.accepted_logins()
            wf("fsm-status", check=0)  # leaves the kept connection
            deadline = time.monotonic() + 20
            while not list((project / ".podflow" / "kept").glob("*.sock")) and time.monotonic() < deadline:
                time.sleep(0.05)
            wf("fsm-status", check=0)
            while not (project / ".podflow" / "cli" / "zygote.sock").exists() and time.monotonic() < deadline + 20:
                time.sleep(0.05)  # the warm CLI server the first command left (it listens once it imported all)
            wf("fsm-status", check=0)
            logins_warm = pod.accepted_logins()
            server = zygote.running(project)
            warm = {name: timed(lambda: fn(base_env), args.repeat, lambda: reaped_cpu(server)) for name, fn in cmds.items()}
            assert zygote.running(project) == server, "the warm CLI server changed during the warm runs"
            unserved_env = {**base_env, "WF_ZYGOTE": "0"}
            unserved = {name: timed(lambda: fn(unserved_env), args.repeat) for name, fn in cmds.items()}
            assert pod.accepted_logins() == logins_warm, "a warm command logged in"
            served = (project / ".podflow" / "cli" / "zygote.log").read_text().count(" served)\n")
            python = Path(WF).with_name("python")
            floor = timed(lambda: subprocess.run([python, "-c", "pass"], check=True), args.repeat * 3)[0]

            # The limit: OpenSSH with a ControlMaster, reading the same files.
            cfg = load_config(cwd=project)
            params = ssh_params(cfg, resolve_ssh_endpoint(cfg))
            control = Path(tempfile.mkdtemp(prefix="cm-", dir="/tmp")) / "cm"
            ssh = ssh_argv(params, password=False)[:1] + ["-o", f"ControlPath={control}"] + ssh_argv(
                params, password=False)[1:] + [pod.host]
            master = subprocess.Popen(ssh[:-1] + ["-o", "ControlMaster=yes", "-N", pod.host],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while not control.exists():
                    time.sleep(0.02)
                o = str(outputs)
                state = f"{o}/_control/workflow_state.json"

                def raw(cmd):
                    subprocess.run(ssh + [cmd], check=False, capture_output=True)

                def raw_run_wait():
                    n[0] += 1
                    rc = f"{o}/_tasks/raw{n[0]}.rc"
                    raw(f"nohup sh -c 'true; echo $? > {rc}' >/dev/null 2>&1 &")
                    raw(f"while [ ! -e {rc} ]; do sleep 0.01; done; cat {rc}")

                # The kept connection's own cost: one exec of `true` through it, in one process.
                from workflow.transport.kept import client as kept

                through = kept.find(project, "pod", params)
                assert through is not None, "no kept connection to measure"
                exec_kept = timed(lambda: through.run(["true"]), args.repeat * 10)[0]
                from workflow.agent_client import AgentClient

                agent = AgentClient(through, str(outputs))
                agent.call("state.read")
                op_kept = timed(lambda: agent.call("state.read"), args.repeat * 10)[0]
                exec_cm = timed(lambda: raw("true"), args.repeat * 10)[0]
                limit = {
                    "fsm-status": timed(lambda: raw(f"cat {state} 2>/dev/null || true"), args.repeat),
                    "task-list (100)": timed(lambda: raw(f"cat {o}/_tasks/*/status.json"), args.repeat),
                    "task-run -> task-wait": timed(raw_run_wait, args.repeat),
                    "sweep-status (1000 runs)": timed(lambda: raw(
                        f"cd {o} && cat run*/status.json >/dev/null && tail -q -n 15 run*/stdout.log"), args.repeat),
                }
            finally:
                master.terminate()
                master.wait()
                shutil.rmtree(control.parent, ignore_errors=True)
            wf("disconnect")

            print(f"SSH logins: {logins_warm - logins_before} to leave the kept connection (the first command's "
                  f"own and the kept one's), 0 for the {len(cmds) * args.repeat + args.repeat} warm commands after")
            print(f"one exec of `true`: {exec_kept * 1000:.1f} ms through the kept connection (in-process), "
                  f"{exec_cm * 1000:.1f} ms as a new `ssh` process through a ControlMaster; one agent op "
                  f"(state.read) on the kept connection's long-lived agent: {op_kept * 1000:.1f} ms")
            load = os.getloadavg()[0]
            print(f"warm CLI server: ran {served} of the warm commands (a child each: its CPU is in the warm column); "
                  f"'no zyg' is warm with "
                  f"WF_ZYGOTE=0 (each wf imports the CLI itself); a bare `python -c pass` of {'this (editable) venv' if args.editable else 'the plain install'}: {floor:.3f} s")
            print(f"medians of {args.repeat}; load average {load:.1f} on {os.cpu_count()} CPUs")
            print(f"{'':28} {'wall seconds':^42}  {'ratios':^18}  {'CPU seconds (local)':^34}")
            print(f"{'command':28} {'cold':>7} {'no zyg':>7} {'warm':>7} {'ssh CM':>7} {'warm':>7}   cold/warm  warm/CM  "
                  f"{'cold':>7} {'no zyg':>7} {'warm':>7} {'ssh CM':>7}")
            print(f"{'':28} {'median':>7} {'median':>7} {'median':>7} {'median':>7} {'least':>7}")
            for name in cmds:
                (cw, cc, _), (uw, uc, _), (ww, wc, wl), (lw, lc, _) = cold[name], unserved[name], warm[name], limit[name]
                print(f"{name:28} {cw:7.3f} {uw:7.3f} {ww:7.3f} {lw:7.3f} {wl:7.3f}   {cw / ww:8.1f}x {ww / lw:7.2f}x  "
                      f"{cc:7.3f} {uc:7.3f} {wc:7.3f} {lc:7.3f}")
        finally:
            from workflow.transport.kept import client as kept

            kept.stop(project)
            zygote.stop(project)
            shutil.rmtree(project, ignore_errors=True)
            shutil.rmtree(installed, ignore_errors=True)


if __name__ == "__main__":
    main()
