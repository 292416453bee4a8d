"""fsm tasks: see and override the workflow state machine on the pod (SPEC §4)."""

from __future__ import annotations

from workflow import runtime
from workflow.cli.boundary import print_json, wf_task

_KEYS = ("state", "updated_at", "history")


@wf_task(help={"json": "print one JSON document: state, updated_at, history (+ stored facts)"})
def fsm_status(c, json=False):
    """Show the workflow state on the pod and its transition history."""
    doc = runtime.fsm().status()
    doc.pop("exists", None)
    if json:
        print_json(doc)
        return
    print(f"state: {doc['state']}")
    print(f"updated: {doc.get('updated_at') or 'never (no state file yet)'}")
    print(f"file: {doc.get('path', '?')}")
    for key in sorted(k for k in doc if k not in _KEYS + ("path",)):
        print(f"{key}: {doc[key]}")
    history = doc.get("history") or []
    if history:
        print("history:")
        for h in history[-20:]:
            reason = f"  ({h['reason']})" if h.get("reason") else ""
            print(f"  {h.get('at')}  {h.get('from')} -> {h.get('to')}  [{h.get('trigger')}] by {h.get('by')}{reason}")


@wf_task(help={"state": "INIT, POD_READY, BOOTSTRAPPED, CHECKED_OUT, SWEEP_RUNNING or SWEEP_COMPLETED",
               "reason": "why; recorded in the history",
               "json": "print the new state file as one JSON document (as fsm-status --json)"})
def fsm_reset(c, state, reason=None, json=False):
    """Set the workflow state by hand (from any state), recorded in the history."""
    doc = runtime.fsm().reset(state.upper(), reason)
    if json:
        print_json({k: v for k, v in doc.items() if k != "exists"})
        return
    print(f"state: {doc['state']} (was {doc['history'][-1]['from']})")
