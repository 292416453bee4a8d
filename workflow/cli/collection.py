"""The Invoke collection behind both ``invoke`` (via ``tasks.py``) and ``wf``.

Tasks live one module per group; every ``@wf_task`` in a group module joins the flat
namespace (``wf config-show``, ``wf task-run``...). Group modules import heavy things
(Fabric, provider SDKs) only inside task bodies.
"""

from __future__ import annotations

from workflow.cli.lean import unittest_mock_deferred

with unittest_mock_deferred():  # Invoke's import, less its MockContext's unittest.mock
    from invoke import Collection, Task

from workflow.cli import (
    config_tasks,
    data_tasks,
    demo_tasks,
    fsm_tasks,
    mcp_tasks,
    money_tasks,
    pod_tasks,
    provider_tasks,
    results_tasks,
    sweep_tasks,
    task_tasks,
    workflow_tasks,
)

GROUPS = (config_tasks, sweep_tasks, provider_tasks, pod_tasks, data_tasks, workflow_tasks, task_tasks, fsm_tasks, money_tasks,
          results_tasks, demo_tasks, mcp_tasks)


def build_collection() -> Collection:
    ns = Collection()
    for module in GROUPS:
        for name in sorted(vars(module)):
            obj = getattr(module, name)
            if isinstance(obj, Task) and obj.__module__ == module.__name__:
                ns.add_task(obj)
    return ns


ns = build_collection()
