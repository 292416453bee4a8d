"""``wf mcp`` driven by the official SDK's stdio client, as an agent would: the tool list
against the CLI's own flags, errors with exit code and hint, confirm-guarded tools,
tracked tasks, and a whole sweep on a password-login loopback sshd pod through tools
only (validate -> start -> status -> bounded wait -> fetch) with one kept SSH connection
and no secret in any result or log line."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import anyio
import pytest
from mcp.client.session import ClientSession  # the test extra installs the SDK
from mcp.client.stdio import StdioServerParameters, stdio_client
from test_sweep_run_helpers import TORCH_VENV, SweepProject, checkout_on_ssh_pod

WF = str(Path(sys.executable).with_name("wf"))
EXPECTED_TOOLS = {"config_show", "sweep_validate", "pod_status", "fsm_status", "sweep_start", "sweep_status",
                  "sweep_wait", "fetch_run", "fetch_all", "task_run", "task_status", "task_list", "task_logs",
                  "task_kill", "cost", "sweep_stop", "pod_down", "fsm_reset"}
WANDB_CANARY = "wandb-canary-3f9c1e7d2b"


class Agent:
    """A client session with ``wf mcp``; every result and the server's stderr are kept so a
    test can check that no secret ever went out."""

    def __init__(self, session: ClientSession, errlog):
        self.session, self.errlog, self.texts = session, errlog, []

    async def call(self, name: str, **arguments: Any):
        res = await self.session.call_tool(name, arguments)
        self.texts.extend(c.text for c in res.content if getattr(c, "text", None))
        self.texts.append(json.dumps(res.structured_content))
        return res

    async def ok(self, name: str, **arguments: Any) -> Dict[str, Any]:
        res = await self.call(name, **arguments)
        assert not res.is_error, f"{name}: {res.structured_content}"
        return res.structured_content

    async def error(self, name: str, **arguments: Any) -> Dict[str, Any]:
        res = await self.call(name, **arguments)
        assert res.is_error, f"{name} should have failed: {res.structured_content}"
        return res.structured_content

    def stderr(self) -> str:
        self.errlog.flush()
        self.errlog.seek(0)
        return self.errlog.read()


@contextlib.asynccontextmanager
async def agent(project: Path, env: Dict[str, str] = None):
    params = StdioServerParameters(command=WF, args=["mcp", "--project", str(project)],
                                   env={"HOME": os.environ["HOME"], "OMP_NUM_THREADS": "1", **(env or {})})
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield Agent(session, errlog)


def run(fn) -> None:
    anyio.run(fn)


def local_project(project: Path) -> None:
    (project / "configs" / "workflow.yaml").write_text("project: t\npod:\n  provider: local\n")


# ---------------------------------------------------------------- the tool list


def test_every_tool_has_the_cli_flags_as_its_schema_and_a_description(project):
    from workflow.cli import ns

    local_project(project)
    hidden = {"json", "watch", "interval", "follow"}

    async def main():
        async with agent(project) as a:
            listed = (await a.session.list_tools()).tools
            tools = {t.name: t for t in listed}
            contexts = {c.name: c for c in copy.deepcopy(ns).to_contexts()}  # deepcopy: Invoke consumes help
            assert set(tools) >= EXPECTED_TOOLS
            for name, tool in tools.items():
                assert "Needs:" in tool.description and "Takes:" in tool.description, name
                # the CLI parser's own view of the command's flags
                parser = contexts[name.replace("_", "-")]
                flags = {a.attr_name or a.name: a for a in parser.args.values() if (a.attr_name or a.name) not in hidden}
                props = dict(tool.input_schema["properties"])
                confirm = props.pop("confirm", None)
                assert (confirm is not None) == (name in ("sweep_stop", "pod_down", "fsm_reset")), name
                assert set(props) == set(flags), name
                for key, arg in flags.items():
                    kind = {bool: "boolean", int: "integer", list: "array"}.get(arg.kind)
                    if kind:
                        assert props[key]["type"] == kind, (name, key)
                    if name != "sweep_wait":
                        assert props[key].get("description") == ns[name.replace("_", "-")].flag_help.get(key), (name, key)
                positional = {k for k, arg in flags.items() if arg.positional}
                assert set(tool.input_schema.get("required", [])) == positional, name
            assert tools["task_run"].input_schema["properties"]["timeout_secs"]["type"] == "number"
            assert tools["sweep_wait"].input_schema["properties"]["timeout_secs"]["maximum"] == 600
            assert "CHECKED_OUT" in tools["sweep_start"].description  # which state it needs

    run(main)
    # the help an agent reads is the help a user reads
    out = subprocess.run([WF, "--help", "task-run"], capture_output=True, text=True, cwd=project).stdout
    assert "TERM the task's whole process group" in " ".join(out.split())


def test_bad_input_is_a_tool_error_with_exit_code_line_numbers_and_hint(project):
    local_project(project)
    (project / "sweeps").mkdir()
    (project / "sweeps" / "bad.csv").write_text("run_id,config,seed,overrides,notes\n"
                                                "ok,configs/tiny.json,1,,\n"
                                                "bad id!,configs/tiny.json,1,,\n"
                                                "ok,configs/tiny.json,x,,\n")
    (project / "sweeps" / "good.csv").write_text("run_id,config,seed,overrides,notes\nok,configs/tiny.json,1,,\n")

    async def main():
        async with agent(project) as a:
            doc = await a.error("sweep_validate", csv="sweeps/bad.csv")
            assert doc["exit_code"] == 2 and doc["error"]["type"]
            assert "bad.csv:3:" in doc["error"]["message"] and "bad.csv:4:" in doc["error"]["message"]
            missing = await a.error("sweep_validate", csv="sweeps/none.csv")
            assert missing["exit_code"] == 2 and "sweep-csv-template" in missing["error"]["hint"]
            too_long = await a.error("sweep_wait", timeout_secs=601)
            assert too_long["exit_code"] == 2 and "600" in too_long["error"]["message"]
            unknown = await a.error("task_status", id="t1", bogus=1)
            assert unknown["exit_code"] == 2 and "bogus" in unknown["error"]["message"]
            refused = await a.error("sweep_start", csv="sweeps/good.csv")  # INIT: the state machine refuses
            assert refused["exit_code"] == 3 and "fsm-reset" in refused["error"]["hint"]

    run(main)


def test_confirm_guards_the_same_documents_as_the_cli_and_config_edits_are_seen(project):
    local_project(project)
    state_file = project / ".podflow" / "local-pod" / "outputs" / "_control" / "workflow_state.json"

    async def main():
        async with agent(project, {"WF__PROGRESS": "quiet"}) as a:
            assert (await a.ok("fsm_status"))["state"] == "INIT"
            for name, args in (("pod_down", {}), ("pod_down", {"destroy": True, "confirm": False}),
                               ("fsm_reset", {"state": "CHECKED_OUT"})):
                doc = await a.error(name, **args)
                assert doc["exit_code"] == 2 and "confirm: true" in doc["error"]["hint"]
            assert not state_file.exists()  # nothing was written
            doc = await a.ok("fsm_reset", state="CHECKED_OUT", reason="by an agent", confirm=True)
            assert doc["state"] == "CHECKED_OUT" and doc["history"][-1]["reason"] == "by an agent"
            assert json.loads(state_file.read_text())["state"] == "CHECKED_OUT"
            cli = subprocess.run([WF, "fsm-status", "--json"], cwd=project, capture_output=True, text=True)
            assert await a.ok("fsm_status") == json.loads(cli.stdout)  # the very document --json prints
            shown = await a.ok("config_show")  # the CLI's precedence: the environment over the file
            assert shown["config"]["progress"] == "quiet" and shown["sources"]["progress"].startswith("env")
            assert set(await a.ok("cost")) >= {"pods", "total_usd"}
            assert (await a.ok("config_show"))["config"]["project"] == "t"
            (project / "configs" / "workflow.yaml").write_text("project: renamed\npod:\n  provider: local\n")
            assert (await a.ok("config_show"))["config"]["project"] == "renamed"

    run(main)


def test_tracked_task_tools_return_at_once_and_never_show_a_secret(project):
    """On the local pod a task sees this machine's environment (W&B keys reach the job), so
    a task can print a secret; the tool result shows it masked."""
    local_project(project)

    async def main():
        async with agent(project, {"WANDB_API_KEY": WANDB_CANARY}) as a:
            await a.ok("task_run", id="k1", cmd='echo "key=$WANDB_API_KEY"')
            with anyio.fail_after(60):
                while "key=" not in (logs := await a.ok("task_logs", id="k1"))["text"]:
                    await anyio.sleep(0.2)
            assert "key=****" in logs["text"]
            assert "key=****" in (await a.ok("task_status", id="k1"))["log_tail"]

            started = await a.ok("task_run", id="t1", cmd="echo hello-from-task; sleep 60", timeout_secs=120)
            assert started["id"] == "t1" and started["state"] == "running"
            with anyio.fail_after(60):
                while "hello-from-task" not in (await a.ok("task_logs", id="t1"))["text"]:
                    await anyio.sleep(0.2)
            assert (await a.ok("task_status", id="t1"))["state"] == "running"
            await a.ok("task_run", id="many", cmd="seq 1 500")
            with anyio.fail_after(60):
                while (await a.ok("task_status", id="many"))["state"] == "running":
                    await anyio.sleep(0.2)
            assert (await a.ok("task_logs", id="many"))["text"].split() == [str(i) for i in range(301, 501)]
            assert (await a.ok("task_logs", id="many", tail=3))["text"].split() == ["498", "499", "500"]
            assert sorted(t["id"] for t in (await a.ok("task_list"))["tasks"]) == ["k1", "many", "t1"]
            killed = await a.ok("task_kill", id="t1")
            assert killed["state"] == "cancelled"
            missing = await a.error("task_status", id="nope")
            assert missing["exit_code"] in (1, 2) and missing["error"]["message"]
            assert WANDB_CANARY not in "\n".join(a.texts + [a.stderr()])

    run(main)


@pytest.mark.skipif(not (TORCH_VENV / "bin" / "python").exists(), reason="needs .venv-torch (bash scripts/setup)")
def test_a_long_wait_reports_progress_returns_the_status_on_time_out_and_stop_needs_confirm(project):
    sp = SweepProject(project, {}, "run_id,config,seed,overrides,notes\nlong,configs/tiny.json,0,steps=200 sleep=0.1,\n")
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async def main():
        async with agent(project) as a:
            await a.ok("sweep_start")
            res = await a.session.call_tool("sweep_wait", {"timeout_secs": 6}, progress_callback=on_progress)
            assert not res.is_error, res.structured_content
            assert res.structured_content["state"] == "running"
            assert res.structured_content["runs"][0]["id"] == "long"
            assert (await a.error("sweep_stop"))["exit_code"] == 2  # cancelling runs needs confirm
            stopped = await a.ok("sweep_stop", confirm=True)
            assert stopped["cancelled"] == ["long"] and stopped["state_moved"]

    try:
        run(main)
    finally:
        sp.wf("sweep-stop")  # refused (exit 3) once the tool stopped it; here for a failed test
    assert progress and progress[0][:2] == (5.0, 6.0) and "sweep_wait" in progress[0][2]


def test_without_the_sdk_wf_mcp_exits_2_naming_the_extra(tmp_path, project):
    local_project(project)
    stub = tmp_path / "no-mcp"
    (stub / "mcp").mkdir(parents=True)
    (stub / "mcp" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n")
    proc = subprocess.run([sys.executable, "-c", "from workflow.cli.main import main; main()", "mcp"],
                          cwd=project, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(stub)))
    assert proc.returncode == 2, proc.stderr
    assert "podflow[mcp]" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- a whole sweep over SSH


def _logins(ssh_pod) -> int:
    return (ssh_pod.dir / "sshd.log").read_text(errors="replace").count("Accepted ")


@pytest.mark.ssh
def test_a_whole_sweep_through_tools_on_a_password_pod(ssh_pod, project):
    ssh_pod.authorize_key(False)  # password only: the secret is in play on every login
    ssh_pod.write_config(project, checkout={"require_cuda": False},
                         sweep={"csv": "sweeps/sweep.csv", "workdir": "examples", "launcher": "python",
                                "entrypoint": "job.py", "args": ["{config}", "--seed={seed}"]})
    (project / "sweeps").mkdir()
    (project / "sweeps" / "sweep.csv").write_text(textwrap.dedent("""\
        run_id,config,seed,overrides,notes
        fast,configs/tiny.json,1,steps=3,
        slow,configs/tiny.json,2,steps=40 sleep=0.25,"still running when we first wait"
        bad,configs/tiny.json,3,steps=1 fail=3,fails on purpose
        """))
    checkout_on_ssh_pod(ssh_pod)
    env = {"REMOTE_SSH_PASSWORD": ssh_pod.password, "WANDB_API_KEY": WANDB_CANARY}

    async def main():
        async with agent(project, env) as a:
            checked = await a.ok("sweep_validate")
            assert checked["ok"] and checked["runs"] == 3
            await a.ok("fsm_reset", state="CHECKED_OUT", reason="checkout made by hand (test)", confirm=True)
            started = await a.ok("sweep_start")
            assert sorted(r["run_id"] for r in started["runs"] if r["launch"]) == ["bad", "fast", "slow"]

            first = await a.ok("sweep_status")
            assert first["state"] in ("running", "completed") and {r["id"] for r in first["runs"]} == {"bad", "fast", "slow"}
            logins = _logins(ssh_pod)
            for _ in range(10):
                st = await a.ok("sweep_status")
                assert set(st) >= {"state", "counts", "percent", "runs"}
            assert _logins(ssh_pod) == logins, "sweep_status opened a new SSH connection"

            res = await a.call("sweep_wait", timeout_secs=1)
            assert not res.is_error, res.structured_content  # a time-out returns the status document
            waited = res.structured_content
            assert waited["state"] == "running" and set(waited) == set(st)
            assert any("still running" in c.text for c in res.content)

            with anyio.fail_after(240):
                while not (res := await a.call("sweep_wait", timeout_secs=30)).is_error:
                    assert res.structured_content["state"] == "running"  # time-outs until it ends
            failed = res.structured_content  # a run failed: exit 1, as `wf sweep-wait`
            assert failed["exit_code"] == 1 and "did not succeed" in failed["error"]["message"]
            done = failed["document"]
            assert done["counts"] == {"success": 2, "failed": 1} and done["percent"] == 100.0
            assert "failing on purpose" in next(r for r in done["runs"] if r["id"] == "bad")["log_tail"]
            assert (await a.ok("fsm_status"))["state"] == "SWEEP_COMPLETED"

            fetched = await a.ok("fetch_all")
            assert sorted(r["run_id"] for r in fetched["runs"]) == ["bad", "fast", "slow"]
            one = await a.ok("fetch_run", run_id="slow")
            assert one["complete"] and one["state"] == "success"
            config = await a.ok("config_show")
            assert config["secrets"]["REMOTE_SSH_PASSWORD"] == "****"
            return a.texts + [a.stderr()]

    outputs: List[str] = []

    async def wrapped():
        outputs.extend(await main())

    run(wrapped)
    for run_id in ("bad", "fast", "slow"):
        assert (project / "artifacts" / run_id / "status.json").exists()
        assert (project / "artifacts" / run_id / "args.json").exists()
    everything = "\n".join(outputs)
    assert "sweep_status -> exit 0" in everything  # the server's log is in there too
    assert ssh_pod.password not in everything and WANDB_CANARY not in everything
