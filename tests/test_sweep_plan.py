"""workflow/sweep/plan.py: each run's exact argv and env."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workflow.config.defaults import defaults
from workflow.config.model import Config
from workflow.errors import ConfigError, InputError
from workflow.sweep import RunPlan, fill_placeholders, parse_sweep_csv, plan_runs, plans_to_json

CSV = (
    "run_id,config,seed,overrides,notes,gpus,timeout_secs\n"
    "a,configs/tiny.json,0,,,,\n"
    'b,configs/tiny.json,1,"lr=0.05 \'note=x, y\'",,2,30\n'
    "c-long,configs/small.json,2,steps=3,,,\n"
    "d-long,configs/small.json,3,,,1,\n"
)
ROWS = parse_sweep_csv(CSV)


def make_config(**sweep):
    data = defaults()
    data["remote"].update(workdir="/pod/repo", outputs_dir="/pod/out", data_dir="/pod/data")
    data["sweep"].update(workdir="examples", **sweep)
    return Config(data=data)


def plan(rows=ROWS, config=None, **kw):
    kw.setdefault("outputs_dir", "/pod/out")
    kw.setdefault("data_dir", "/pod/data")
    return plan_runs(rows, config or make_config(), **kw)


def test_torchrun_argv_on_cpu():
    p = plan()
    assert [x.run_id for x in p] == ["a", "b", "c-long", "d-long"]
    assert p[0].argv == ("torchrun", "--standalone", "--nproc_per_node=1", "train.py",
                         "configs/tiny.json", "--seed=0", "--out_dir=/pod/out/a")
    assert p[1].argv[-2:] == ("lr=0.05", "note=x, y")
    assert p[0].workdir == "/pod/repo/examples"
    assert p[0].config_path == "/pod/repo/examples/configs/tiny.json"
    assert p[0].out_dir == p[0].script_out_dir == "/pod/out/a"
    assert dict(p[0].env) == {"WF_RUN_ID": "a", "WF_OUT_DIR": "/pod/out/a", "WF_SEED": "0", "WANDB_MODE": "disabled"}
    assert "CUDA_VISIBLE_DEVICES" not in p[0].env  # the runner assigns GPUs
    assert [x.gpus for x in p] == [0, 0, 0, 0]
    assert [x.timeout_secs for x in p] == [None, 30, None, None]
    assert [x.line for x in p] == [2, 3, 4, 5]


def test_cpu_nproc_and_default_timeout_from_config():
    p = plan(config=make_config(nproc_per_node=2, run_timeout_secs=600))
    assert all(x.argv[2] == "--nproc_per_node=2" for x in p)
    assert [x.timeout_secs for x in p] == [600, 30, 600, 600]


def test_gpus_row_then_config_then_all():
    p = plan(gpu_count=4)
    assert [(x.gpus, x.argv[2]) for x in p] == [(4, "--nproc_per_node=4"), (2, "--nproc_per_node=2"),
                                                (4, "--nproc_per_node=4"), (1, "--nproc_per_node=1")]
    p = plan(config=make_config(gpus_per_run=1), gpu_count=4)
    assert [x.gpus for x in p] == [1, 2, 1, 1]
    with pytest.raises(InputError, match="line 3: run b asks for 2 GPUs, the pod has 1"):
        plan(gpu_count=1)


def test_python_launcher_and_placeholders():
    cfg = make_config(launcher="python", entrypoint="run.py",
                      args=["--cfg={config}", "{seed}", "--out", "{out_dir}", "--data={data_dir}", "--name=r-{run_id}",
                            "--json={{}}"])
    p = plan(config=cfg, match="b")
    assert p[0].argv == ("python", "run.py", "--cfg=configs/tiny.json", "1", "--out", "/pod/out/b", "--data=/pod/data",
                         "--name=r-b", "--json={}", "lr=0.05", "note=x, y")


def test_bad_placeholders_and_launcher():
    with pytest.raises(ConfigError, match=r"unknown placeholder \{outdir\}"):
        plan(config=make_config(args=["{outdir}"]))
    with pytest.raises(ConfigError, match="unknown placeholder"):
        fill_placeholders("{config.__class__}", {"config": "x"})
    with pytest.raises(ConfigError, match="unbalanced"):
        fill_placeholders("{config", {"config": "x"})
    with pytest.raises(ConfigError, match="sweep.launcher"):
        plan(config=make_config(launcher="bash"))


def test_match_start_at_limit():
    ids = lambda **kw: [x.run_id for x in plan(**kw)]  # noqa: E731
    assert ids(match="long") == ["c-long", "d-long"]
    assert ids(start_at="b") == ["b", "c-long", "d-long"]
    assert ids(start_at="b", match="long", limit=1) == ["c-long"]
    assert ids(limit=2) == ["a", "b"]
    assert ids(match="zzz") == []
    with pytest.raises(InputError, match="no run 'zz'"):
        plan(start_at="zz")
    with pytest.raises(InputError):
        plan(start_at="../x")
    with pytest.raises(InputError, match="--limit"):
        plan(limit=0)


def test_local_sync_writes_to_local_root():
    p = plan(config=make_config(out_mode="local_sync", local_root="/fast/out"))
    assert p[0].out_dir == "/pod/out/a"
    assert p[0].script_out_dir == "/fast/out/a"
    assert p[0].env["WF_OUT_DIR"] == "/fast/out/a" and "--out_dir=/fast/out/a" in p[0].argv
    p = plan(config=make_config(out_mode="local_sync"))
    assert p[0].script_out_dir == "/pod/repo/examples/out/a"


def test_wandb_env():
    cfg = make_config(wandb={"enabled": True, "project": "proj", "group": "g1"})
    env = dict(plan(config=cfg)[0].env)
    assert env["WANDB_PROJECT"] == "proj" and env["WANDB_RUN_GROUP"] == "g1" and env["WANDB_NAME"] == "a"
    assert "WANDB_MODE" not in env


def test_json_round_trip_and_immutability():
    p = plan()
    doc = json.loads(plans_to_json(p))
    back = [RunPlan.from_dict(d) for d in doc["runs"]]
    assert back == p
    assert json.loads(p[1].to_json())["argv"][-1] == "note=x, y"
    with pytest.raises(Exception):
        p[0].env["X"] = "1"
    with pytest.raises(Exception):
        p[0].run_id = "z"


def test_argv_reaches_the_program_literally(tmp_path):
    """The planned argv, executed without a shell, delivers each override verbatim."""
    (tmp_path / "echo.py").write_text("import json, os, sys\nprint(json.dumps([sys.argv[1:], os.environ['WF_RUN_ID']]))\n")
    rows = parse_sweep_csv("run_id,config,seed,overrides,notes\n"
                           "r1,c.json,7,\"'q=\"\"x\"\"' 'a=1,2' 'b=x;y' 'c=$(touch pwned)' d=`id`\",\n")
    (p,) = plan(rows, make_config(launcher="python", entrypoint="echo.py"), workdir=str(tmp_path))
    argv = [sys.executable, *p.argv[1:]]
    out = subprocess.run(argv, cwd=p.workdir, env={**p.env, "PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    args, run_id = json.loads(out)
    assert run_id == "r1"
    assert args == ["c.json", "--seed=7", "--out_dir=/pod/out/r1", 'q="x"', "a=1,2", "b=x;y", "c=$(touch pwned)",
                    "d=`id`"]
    assert not (tmp_path / "pwned").exists()
