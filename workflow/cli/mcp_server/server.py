"""The MCP server on stdio, on the official ``mcp`` SDK's low-level ``Server``.

Tools are listed from ``tools.available()`` with schemas from the CLI's own tasks. A call
runs in a worker thread (podflow's transports block) under one lock: tools run one at a
time, in the project directory the server was started in, sharing ``workflow.runtime``'s
per-invocation objects, which here live as long as the server. So the connection to the
pod (and the agent client, the FSM) is kept between calls: a second ``sweep_status`` is
one remote exec on the open SSH connection, no new login. A dead connection is reopened
by the transport itself; an edited config file or env file is noticed before the next
call (the runtime is reset and the config read again).

stdout is the protocol channel: the SDK points fd 1 at stderr while it serves, so
nothing a command prints (or a child process like rsync writes) can corrupt it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from workflow import __version__, runtime
from workflow.errors import ExitCode
from workflow.cli.mcp_server import tools

log = logging.getLogger("podflow.mcp")

#: How often a running call reports progress.
PROGRESS_EVERY_SECS = 5.0

INSTRUCTIONS = """\
podflow runs ML sweeps on a GPU pod (or this machine) for the project in this directory.
The usual flow: sweep_validate (the CSV, locally) -> sweep_start (returns at once) ->
sweep_status / sweep_wait (bounded by timeout_secs; on time-out it returns the status
document, call it again) -> fetch_all or fetch_run (results into local.artifacts_dir).
fsm_status shows the workflow state (INIT -> POD_READY -> BOOTSTRAPPED -> CHECKED_OUT ->
SWEEP_RUNNING -> SWEEP_COMPLETED); a command started in a state it may not start from is
refused with exit code 3. Every tool returns the JSON document of the command's --json.
A failed call is a tool error whose document is {"error": {"type", "message", "hint"},
"exit_code"}: 1 the remote work failed, 2 bad input (arguments, config, CSV), 3 refused
by the state machine, 4 the pod or provider unreachable, 5 a wait timed out. pod_down
and fsm_reset are refused unless confirm is true. Long work runs on the pod in tmux and
goes on whatever happens to this server."""


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return tools.redact(super().format(record), tools.secret_values())


def _config_stamp() -> Tuple[Any, ...]:
    """What says the config changed: the YAML's and the env file's size and mtime."""
    from workflow.config.loader import ENV_FILE_NAME, config_path

    cfg, _ = config_path(None, os.environ, Path.cwd())
    env = Path(os.environ["WF_ENV_FILE"]) if os.environ.get("WF_ENV_FILE") else cfg.with_name(ENV_FILE_NAME)
    stamp: List[Any] = []
    for path in (cfg, env):
        try:
            st = path.stat()
            stamp.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((str(path), None))
    return tuple(stamp)


class PodflowTools:
    """The tools of one server process: listing, and calls one at a time."""

    def __init__(self) -> None:
        self.specs = {spec.name: spec for spec in tools.available()}
        self._lock = threading.Lock()
        self._stamp: Optional[Tuple[Any, ...]] = None

    def list(self) -> List[types.Tool]:
        return [types.Tool(
            name=spec.name,
            description=tools.description_of(spec),
            input_schema=tools.schema_of(spec),
            annotations=types.ToolAnnotations(read_only_hint=spec.read_only, destructive_hint=bool(spec.confirm)),
        ) for spec in self.specs.values()]

    def call_sync(self, name: str, arguments: Optional[Dict[str, Any]]) -> tools.Outcome:
        spec = self.specs.get(name)
        if spec is None:
            return tools.failure(ExitCode.BAD_INPUT, "InputError", f"no tool named {name!r}",
                                 hint="tools: " + ", ".join(self.specs))
        with self._lock:
            stamp = _config_stamp()
            if stamp != self._stamp:
                runtime.reset()  # the config changed (or first call): read it again
                self._stamp = stamp
            t0 = time.monotonic()
            outcome = tools.call(spec, arguments)
            log.info("%s -> exit %d in %.2fs", name, outcome.exit_code, time.monotonic() - t0)
        secrets = tools.secret_values()
        return tools.Outcome(tools.redact(outcome.doc, secrets), outcome.exit_code,
                             tools.redact(outcome.note, secrets))


def _result(outcome: tools.Outcome) -> types.CallToolResult:
    content = [types.TextContent(type="text", text=json.dumps(outcome.doc, sort_keys=True))]  # one line: fewer tokens
    if outcome.note:
        content.append(types.TextContent(type="text", text=outcome.note))
    return types.CallToolResult(content=content, structured_content=outcome.doc, is_error=outcome.is_error)


async def _heartbeat(ctx, params: types.CallToolRequestParams) -> None:
    """Progress every ``PROGRESS_EVERY_SECS`` while a call runs (a no-op unless the client
    asked for progress): the seconds so far, out of ``timeout_secs`` when the call has one.
    Clients that reset their request timeout on progress then let a long wait finish."""
    total = (params.arguments or {}).get("timeout_secs")
    total = float(total) if isinstance(total, (int, float)) else None
    elapsed = 0.0
    while True:
        await anyio.sleep(PROGRESS_EVERY_SECS)
        elapsed += PROGRESS_EVERY_SECS
        await ctx.session.report_progress(elapsed, total, f"{params.name}: {elapsed:.0f}s so far")


def build_server(podflow: PodflowTools) -> Server:
    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=podflow.list())

    async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        outcome = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_heartbeat, ctx, params)
            outcome = await anyio.to_thread.run_sync(podflow.call_sync, params.name, params.arguments)
            tg.cancel_scope.cancel()
        return _result(outcome)

    return Server("podflow", version=__version__, instructions=INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call_tool)


def serve() -> None:
    """Serve on stdin/stdout until the client closes them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("podflow mcp: %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    log.setLevel(logging.INFO)
    podflow = PodflowTools()
    server = build_server(podflow)

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    try:
        anyio.run(main)
    finally:
        runtime.reset()
