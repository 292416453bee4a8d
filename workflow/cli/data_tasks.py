"""data tasks: move data to the pod and results back (SPEC §3)."""

from __future__ import annotations

from workflow.cli.boundary import print_json, wf_task  # noqa: F401
