"""End every process of a pod at once, as a dead machine would (a local pool pod taken
down, SPEC §8): the sweep runner, every run and task, their tmux server, the watchdog,
the word a multi-node run's node 0 left for its late nodes.

Nothing is told to stop and nothing writes an end state: the processes are frozen
(SIGSTOP) as they are found, so the runner cannot launch or record anything meanwhile,
then killed (SIGKILL). What the pod's files say afterwards is what a crash leaves
(runs ``running`` whose processes are gone: the repair pass calls them ``lost``).

A job's processes are found as the repair pass finds them (``job_scan``): its wrapper
(pid and nonce), its process group, the marker in its environment.
"""

import glob
import os
import signal
import shutil
import subprocess

from .autostop import owner_pid
from .fsutil import expand
from .job_scan import job_pids, wrapper_alive
from .job_status import ACTIVE, read_status
from .job_launch import tmux_socket_name
from .node_word import live_pid


def _job_dirs(outputs):
    """Every tracked job of the pod: runs, tasks, the sweep runner."""
    return [os.path.dirname(p) for pattern in ("*/status.json", "_tasks/*/status.json",
                                               "_control/sweep/runner/status.json")
            for p in glob.glob(os.path.join(glob.escape(outputs), pattern))]


def _live_pids(outputs):
    pids = set()
    for d in _job_dirs(outputs):
        word = live_pid(d)  # node 0's word for the nodes that never came (node_word)
        if word:
            pids.add(word)
        doc = read_status(d)
        if not doc or doc.get("state") not in ACTIVE:
            continue
        if wrapper_alive(doc):
            pids.add(int(doc["wrapper_pid"]))
        pids.update(job_pids(doc.get("nonce"), doc.get("pgid")))
    watchdog = owner_pid(os.path.join(outputs, "_control"))
    if watchdog:
        pids.add(watchdog)
    pids.discard(os.getpid())
    return pids


def end_pod_processes(outputs):
    """Freeze, then kill, every process of the pod whose outputs dir is ``outputs``, and
    end its tmux server; returns how many processes were ended."""
    outputs = expand(outputs)
    frozen = set()
    for _ in range(5):  # a process forked between two scans is found by the next one
        found = _live_pids(outputs) - frozen
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass
        frozen |= found
    for pid in frozen:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    tmux = shutil.which("tmux")
    if tmux:
        subprocess.run([tmux, "-f", "/dev/null", "-L", tmux_socket_name(outputs), "kill-server"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return len(frozen)
