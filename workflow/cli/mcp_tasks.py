"""agents: the Model Context Protocol server, so coding agents drive podflow with typed tools (SPEC §12)."""

from __future__ import annotations

import os
from typing import Optional

from workflow.cli.boundary import wf_task
from workflow.errors import InputError


@wf_task(help={"project": "project directory to serve (default: the current one); every tool runs there"})
def mcp(c, project: Optional[str] = None):
    """Serve podflow's commands as MCP tools on stdin/stdout (for Claude Code, Claude Desktop, ...).

    Tools: pod_status, fsm_status, config_show, sweep_validate, sweep_start, sweep_status,
    sweep_wait, fetch_run, fetch_all, task_run, task_status, task_list, task_logs,
    task_kill, cost, and sweep_stop, pod_down, fsm_reset (these need confirm: true). Each returns
    the document of the command's --json; a failure is a tool error with the exit code,
    message and hint. The config is read as by the CLI (file < env file < environment)
    and the connection to the pod is kept between calls. Needs the podflow[mcp] extra.
    """
    try:
        from workflow.cli.mcp_server.server import serve
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("mcp", "mcp_types", "anyio"):
            raise
        raise InputError("wf mcp needs the MCP SDK, which is not installed",
                         hint="pip install 'podflow[mcp]' (Python 3.10 or newer)") from None
    if project:
        if not os.path.isdir(project):
            raise InputError(f"--project {project}: no such directory")
        os.chdir(project)
    serve()
