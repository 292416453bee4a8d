"""Injection: ids, paths, env values, overrides and commands holding shell
metacharacters reach the pod literally and never run anything unintended (a canary
file that must never appear)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from figures import record
from relhelpers import has_traceback, sweep_project, wf_inproc

pytestmark = pytest.mark.ssh


def payloads(canary: str):
    touch = f"touch {canary}"
    return [f"x;{touch}", f"$({touch})", f"`{touch}`", f"x|{touch}", f"x&&{touch}", f"x\n{touch}",
            f"x'; {touch}; '", f'x"; {touch}; "', "*", "../../x", f"x$IFS{touch}", f"x||{touch}",
            f"x > {canary}", f"${{x:-$({touch})}}"]


@pytest.fixture
def canary():
    path = Path(f"/tmp/wfcanary-{uuid.uuid4().hex}")
    yield path
    assert not path.exists(), "an injected command ran"


def test_ids_and_names_are_refused(ssh_pod, project, canary):
    ssh_pod.write_config(project)
    n = 0
    for p in payloads(str(canary)):
        for argv in (("task-run", f"--id={p}", "--cmd", "true"), ("task-status", f"--id={p}"),
                     ("task-kill", f"--id={p}"), ("fetch-run", "--run-id", p), ("push-data", str(project), "--name", p)):
            r = wf_inproc(*argv)
            assert r.code == 2 and not has_traceback(r.text), (argv, r.text)
            n += 1
    assert not canary.exists()
    record("injection", "ids and names with metacharacters (task-run/status/kill, fetch-run, push-data)", count=n,
           survived=True)


def test_workdir_env_and_command_reach_the_pod_literally(ssh_pod, project, canary):
    ps = payloads(str(canary))
    ssh_pod.write_config(project, remote__env={f"INJ{i}": v for i, v in enumerate(ps)})
    n = 0
    # a workdir that does not exist: refused, nothing run
    for p in ps[:6]:
        r = wf_inproc("task-run", "--id", f"w{n}", "--workdir", f"/tmp/{p}", "--cmd", "true")
        assert r.code == 2 and "does not exist" in r.err, r.text
        n += 1
    # a workdir whose name holds metacharacters, env values through --env and remote.env
    odd = ssh_pod.remote_dir / "dir $(x) `y`; 'q' \"z\" & *"
    odd.mkdir()
    import os

    os.chown(odd, ssh_pod.uid, ssh_pod.gid)
    envs = []
    for i, p in enumerate(ps):
        envs += ["--env", f"E{i}={p}"]
    cmd = ("python3 -c 'import json, os; json.dump({\"cwd\": os.getcwd(), \"env\": dict(os.environ)}, "
           "open(os.environ[\"WF_TASK_DIR\"] + \"/seen.json\", \"w\"))'\n# a comment with $(touch " + str(canary) + ")\n")
    r = wf_inproc("task-run", "--id", "lit", "--workdir", str(odd), "--cmd", cmd, *envs)
    assert r.code == 0, r.text
    assert wf_inproc("task-wait", "--id", "lit").code == 0
    tdir = ssh_pod.remote_dir / "outputs" / "_tasks" / "lit"
    seen = json.loads((tdir / "seen.json").read_text())
    assert seen["cwd"] == str(odd)
    for i, p in enumerate(ps):
        assert seen["env"][f"E{i}"] == p and seen["env"][f"INJ{i}"] == p, i
        n += 2
    assert (tdir / "command.sh").read_text() == cmd
    assert json.loads((tdir / "status.json").read_text())["command"] == cmd
    record("injection", "task workdir, --env and remote.env values with metacharacters (arrive literally)",
           count=n, survived=True)


def test_outputs_dir_with_metacharacters(ssh_pod, project, canary):
    out = ssh_pod.remote_dir / f"out $(touch {canary}) `touch {canary}`; 'a' \"b\""
    ssh_pod.write_config(project, remote__outputs_dir=str(out))
    assert wf_inproc("task-run", "--id", "t", "--cmd", "echo inside").code == 0
    r = wf_inproc("task-wait", "--id", "t", "--json")
    assert r.code == 0 and "inside" in json.loads(r.out)["log_tail"], r.text
    assert (out / "_tasks" / "t" / "status.json").exists()
    assert wf_inproc("fsm-reset", "POD_READY").code == 0
    assert json.loads((out / "_control" / "workflow_state.json").read_text())["state"] == "POD_READY"
    record("injection", "outputs_dir with metacharacters (tasks, state file)", count=3, survived=True)


def test_sweep_overrides_are_argv_never_a_shell(ssh_pod, project, canary):
    touch = f"touch {canary}"
    overrides = f"'a=$({touch})' 'b=`{touch}`' 'c;{touch}' 'd|x' '&&' '*' 'e=\"q\"' ../../f"
    expect = [f"a=$({touch})", f"b=`{touch}`", f"c;{touch}", "d|x", "&&", "*", 'e="q"', "../../f"]
    sweep_project(ssh_pod, project, [("inj1", overrides.replace('"', '""'))])
    r = wf_inproc("sweep-start")
    assert r.code == 0, r.text
    assert wf_inproc("sweep-wait", "--timeout-secs", "60").code == 0
    argv = json.loads((ssh_pod.remote_dir / "outputs" / "inj1" / "argv.json").read_text())
    assert argv[-len(expect):] == expect, argv
    # a run id with metacharacters never gets that far
    (project / "sweeps" / "s.csv").write_text(f'run_id,config,seed,overrides,notes\n"x;{touch}",configs/a.yaml,1,,\n')
    r = wf_inproc("sweep-start")
    assert r.code == 2 and not has_traceback(r.text), r.text
    record("injection", "sweep overrides with metacharacters (argv, literally) + a bad run id", count=len(expect) + 1,
           survived=True)
