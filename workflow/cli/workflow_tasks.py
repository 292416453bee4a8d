"""workflow: bootstrap the pod, check out the code (SPEC §3; each runs on the pod as a tracked task)."""

from __future__ import annotations

from workflow.cli.boundary import wf_task
from workflow.cli.pods import POD_HELP, on_pods

_PROGRESS = "realtime (every log line), milestones (key steps) or quiet (only the end); default: config 'progress'"
_DETACH = "start the task and return at once; print its id (wf task-wait --id ID waits; the state moves on success)"


@wf_task(help={"progress": _PROGRESS, "detach": _DETACH, "pod": POD_HELP})
def bootstrap(c, progress=None, detach=False, pod=None):
    """Check (or install) git, tmux, rsync, python venv on the pod; run bootstrap.script; -> BOOTSTRAPPED.

    Missing prerequisites are installed with apt only with bootstrap.install_prereqs
    (as root or with sudo -n); otherwise bootstrap fails naming them. Writes
    <outputs_dir>/_control/setup.log (versions, pip freeze, nvidia-smi). Runs
    bootstrap.wandb_setup_script only when sweep.wandb.enabled. A second run only
    checks. (Re)starts the watchdog on the pod (autostop.*, pod.ttl, pod.max_cost_usd);
    with WF_NOTIFY_URLS set, makes sure it can send them: Apprise (podflow's notify
    extra) is installed with pip into <outputs_dir>/_control/notify-venv unless the
    pod's python has it. Starts from POD_READY, BOOTSTRAPPED, CHECKED_OUT or SWEEP_COMPLETED.
    """
    from workflow import prepare, runtime
    from workflow.money.watchdog import launch_current

    def work():
        prepare.run("bootstrap", progress=progress, detach=detach)
        if not detach:
            launch_current(runtime.config(), runtime.agent())  # the watchdog, with the config of now

    on_pods(pod, work)


@wf_task(help={"progress": _PROGRESS, "detach": _DETACH, "pod": POD_HELP})
def checkout(c, progress=None, detach=False, pod=None):
    """Clone/fetch checkout.repo_url at branch, PR or default; venv, install, torch/CUDA preflight, data checks; -> CHECKED_OUT.

    Verifies checkout.expect_sha, refuses to discard local changes on the pod unless
    checkout.force_clean, makes <workdir>/.venv with --system-site-packages from
    remote.python (recreated with checkout.venv_recreate), runs checkout.install, then
    checks `import torch` (checkout.require_torch) and CUDA (checkout.require_cuda) and
    data.checks (running data.download once on a failure). The checked-out SHA is
    recorded in the state file. Starts from BOOTSTRAPPED, CHECKED_OUT or SWEEP_COMPLETED.
    On a pool the commit is resolved once (git ls-remote on the first pod that may
    check out) and every pod checks out that SHA, the pods at once.
    """
    from workflow import pool, prepare, runtime

    sha, ready, refused = prepare.pin_commit(pool.select(runtime.config(), pod))
    on_pods(pod, lambda: prepare.run("checkout", progress=progress, detach=detach, sha=sha),
            pods=ready, earlier=refused)
