"""fsm tasks: see and override the workflow state machine on the pod (SPEC §4)."""

from __future__ import annotations

from workflow import pool, runtime
from workflow.cli.boundary import print_json, wf_task
from workflow.cli.pods import POD_HELP, error_entry, on_pods

_KEYS = ("state", "updated_at", "history")


@wf_task(help={"json": "print one JSON document: state, updated_at, history (+ stored facts), pods",
               "pod": POD_HELP})
def fsm_status(c, json=False, pod=None):
    """Show the workflow state on the pod and its transition history.

    On a pool: each pod's state, and the pool's (its lowest pod's) state; --json adds
    pods: [{name, state, updated_at}] (a pod that cannot be read has an error instead)."""
    from workflow.fsm import order

    results = on_pods(pod, lambda: _status(runtime.fsm()), raise_errors=len(pool.select(runtime.config(), pod)) == 1)
    read = [r for r in results if r.ok]
    doc = dict(min(read, key=lambda r: order(r.value["state"])).value) if read else {"state": None}
    doc["pods"] = [{"name": r.pod.name, "state": r.value["state"], "updated_at": r.value.get("updated_at")}
                   if r.ok else error_entry(r) for r in results]
    if json:
        print_json(doc)
    elif len(results) == 1:
        _print_one(doc)
    else:
        for entry in doc["pods"]:
            print(f"{entry['name']}: {entry.get('state') or 'unknown'}"
                  + (f"  (updated {entry['updated_at']})" if entry.get("updated_at") else "")
                  + (f"  error: {entry['error']['message']}" if entry.get("error") else ""))
        print(f"pool: {doc['state'] or 'unknown'} (the lowest state of its pods)")
    pool.raise_failures(results)


def _status(fsm):
    doc = fsm.status()
    doc.pop("exists", None)
    return doc


def _print_one(doc) -> None:
    print(f"state: {doc['state']}")
    print(f"updated: {doc.get('updated_at') or 'never (no state file yet)'}")
    print(f"file: {doc.get('path', '?')}")
    for key in sorted(k for k in doc if k not in _KEYS + ("path", "pods")):
        print(f"{key}: {doc[key]}")
    history = doc.get("history") or []
    if history:
        print("history:")
        for h in history[-20:]:
            reason = f"  ({h['reason']})" if h.get("reason") else ""
            print(f"  {h.get('at')}  {h.get('from')} -> {h.get('to')}  [{h.get('trigger')}] by {h.get('by')}{reason}")


@wf_task(help={"state": "INIT, POD_READY, BOOTSTRAPPED, CHECKED_OUT, SWEEP_RUNNING or SWEEP_COMPLETED",
               "reason": "why; recorded in the history",
               "json": "print the new state file as one JSON document (as fsm-status --json)",
               "pod": POD_HELP})
def fsm_reset(c, state, reason=None, json=False, pod=None):
    """Set the workflow state by hand (from any state), recorded in the history."""
    on_pods(pod, lambda: runtime.fsm().reset(state.upper(), reason),
            render=lambda doc: print(f"state: {doc['state']} (was {doc['history'][-1]['from']})"),
            to_doc=lambda doc: {k: v for k, v in doc.items() if k != "exists"}, json=json)
