"""Where a sweep's files are on the pod (SPEC §5), and the reads every sweep op shares:
the plan, the runner's status after the repair pass, a run's status that never raises."""

import os
import threading

from . import procs
from .fsutil import expand, read_json
from .protocol import AgentError


RUNNER_ID = "sweep-runner"
RUN_COMMAND = "sweep-run"


def control_dir(request_or_outputs):
    outputs = request_or_outputs if isinstance(request_or_outputs, str) else request_or_outputs["outputs_dir"]
    return os.path.join(expand(outputs), "_control", "sweep")


def runner_dir(ctl):
    return os.path.join(ctl, "runner")


def run_dir(outputs, run_id):
    return os.path.join(outputs, procs.validate_id(run_id, "run id"))


def runner_state(ctl):
    """The runner's status after the repair pass (None: never started)."""
    d = runner_dir(ctl)
    if not os.path.isfile(procs.status_path(d)):
        return None
    return procs.refresh_status(d)


def runner_public(doc):
    if doc is None:
        return {"alive": False, "state": None}
    return {"alive": doc.get("state") in procs.ACTIVE, "state": doc.get("state"), "pid": doc.get("pid"),
            "wrapper_pid": doc.get("wrapper_pid"), "started_at": doc.get("started_at"),
            "finished_at": doc.get("finished_at"), "exit_code": doc.get("exit_code"),
            "error": doc.get("error"), "sweep_id": doc.get("sweep_id"),
            "tmux_session": doc.get("tmux_session"), "tmux_socket": doc.get("tmux_socket")}


def read_status_safe(d):
    try:
        return procs.refresh_status(d)
    except AgentError as exc:
        return {"state": "unknown", "error": exc.message}


def read_plan(ctl):
    return read_json(os.path.join(ctl, "plan.json"), default=None, what="sweep plan")


def withdrawn_path(ctl):
    return os.path.join(ctl, "withdrawn.json")


def read_withdrawn(ctl, sweep_id):
    """The runs of sweep ``sweep_id`` taken away from this pod (a pool moved them to
    another): never launched here again, not shown in this pod's status."""
    doc = read_json(withdrawn_path(ctl), default=None, what="withdrawn runs") or {}
    return set(doc.get("runs") or ()) if doc.get("sweep_id") == sweep_id else set()


def terminate_all(dirs, grace, end=None):
    results = {}

    def one(d):
        try:
            results[d] = procs.terminate(d, grace_secs=grace, end=end)[1]
        except AgentError:
            results[d] = False

    threads = [threading.Thread(target=one, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results

