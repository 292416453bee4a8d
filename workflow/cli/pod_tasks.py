"""pod tasks: reach the pod (check-connection, remote-exec, disconnect) and set up SSH keys (setup-keys).

``pod-up``, ``pod-down``, ``pod-status`` and ``offers`` live in ``provider_tasks``.
"""

from __future__ import annotations

import sys

from invoke import Exit

from workflow import runtime
from workflow.cli.boundary import wf_task
from workflow.cli.pods import POD_HELP, on_pods


@wf_task(help={"json": "print one JSON document: user, host, python, gpus, disk", "pod": POD_HELP})
def check_connection(c, json=False, pod=None):
    """Connect to the pod and show user, host, python, GPUs and free disk (one remote exec)."""
    from workflow.transport.probe import check_connection as check

    on_pods(pod, lambda: check(runtime.config(), runtime.transport()), render=_print_connection,
            to_doc=lambda doc: doc, json=json)


def _print_connection(doc) -> None:
    print(f"connected: {doc['endpoint']} ({doc['transport']})"
          + (f" in {doc['connect_ms']} ms" if doc.get("connect_ms") is not None else ""))
    print(f"user: {doc['user']}")
    print(f"host: {doc['host']}")
    print(f"python: {doc['python'] or 'not found'} ({doc['python_bin']})")
    gpus = doc["gpus"]
    print("gpus: " + ("none" if not gpus else "; ".join(f"{g['index']}: {g['name']} {g['memory']}" for g in gpus)))
    free = doc.get("disk_free_bytes")
    if free is None:
        print("disk free: unknown")
    else:
        print(f"disk free: {free / 2**30:.1f} GiB at {doc['disk_path']} (for {doc['outputs_dir']})")


@wf_task(help={"cmd": "shell command line, run by the pod user's login shell",
               "timeout_secs": "give up waiting after N seconds (exit 124; the command may go on)",
               "pod": POD_HELP})
def remote_exec(c, cmd, timeout_secs=None, pod=None):
    """Run CMD on the pod through its shell, streaming output; exits with CMD's exit code.

    stderr is merged into stdout (as on a terminal). remote.env is set for the command.
    On several pods it runs on each at once (each output line starts with the pod's
    name) and exits with the highest of their exit codes.
    """
    from workflow.transport.probe import remote_exec as rexec

    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    results = on_pods(pod, lambda: rexec(runtime.config(), runtime.transport(), cmd,
                                         timeout=float(timeout_secs) if timeout_secs else None, on_stdout=out))
    failed = [r for r in results if r.value != 0]
    if len(results) > 1 and failed:
        raise Exit("error: the command failed on " + ", ".join(f"{r.pod.name} (exit {r.value})" for r in failed),
                   code=max(r.value for r in failed))
    if failed:
        raise Exit(code=failed[0].value)


@wf_task(help={"pod": POD_HELP})
def setup_keys(c, pod=None):
    """Create the SSH key (pod.identity_file, ed25519, no passphrase) and install it on the pod.

    With REMOTE_SSH_PASSWORD in the environment the public key is added to the pod
    user's ~/.ssh/authorized_keys (once; a re-run adds nothing) and a key-only login is
    verified. Without it, prints NO_PASSWORD_MODE and the public key between
    PUBLIC_KEY_START and PUBLIC_KEY_END, to paste into the provider's dashboard.
    """
    from workflow.transport.keys import setup_keys as setup

    on_pods(pod, lambda: setup(runtime.config(), runtime.transport, out=print))


@wf_task
def disconnect(c):
    """End the pod's kept connection now (it also ends by itself after pod.keepalive_secs idle).

    The first command that reaches a pod leaves a small background process holding the
    SSH connection (a unix socket under .podflow/kept/, usable only by you), so later
    commands skip the SSH handshake. The next command after this connects afresh. On a
    pool, every pod's. The project's warm CLI server (.podflow/cli/) ends too.
    """
    from workflow.cli import zygote

    n = runtime.disconnect()
    zygote.stop(runtime.config().root)
    print(f"ended {n} kept connection{'s' if n != 1 else ''}" if n else "no kept connection was running")
