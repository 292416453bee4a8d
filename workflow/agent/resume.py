"""Resume, not restart (SPEC §8), on the pod: what a run launched again starts from.

A run launched again (restarted after ``lost``, retried, moved from another pod) finds
its earlier files in its out dir: the pod's own, or a copy the client pushed up first
(``workflow.sweep.resume``). The runner then gives it ``WF_ATTEMPT`` (1, 2, ...),
``WF_RESUME=1`` when there are earlier files, and the run's ``resume_argv``
(``sweep.resume_args``, placeholders filled) after its overrides.

"Earlier files" are the script's own: the engine's files (status, log, command, locks,
``summary.json``) do not count, so a run that failed before writing anything starts
afresh.
"""

import os
import shutil

from . import procs
from .node_word import WORD_FILE

#: The engine's own files in a run dir (top level).
RUN_ENGINE_FILES = (procs.STATUS_FILE, procs.LOG_FILE, procs.COMMAND_FILE, procs.LOCK_FILE, procs.FIFO_FILE,
                    procs.WRAPPER_LOG, WORD_FILE)
#: Never "earlier files" of the script: the engine's, and the summary the runner merges into.
ENGINE_OWN = RUN_ENGINE_FILES + ("summary.json", "summary.json.unparsable")


def earlier_files(d):
    """``{"files": n, "newest_ns": t}`` of the script's files under ``d`` (0/None: none)."""
    count, newest = 0, None
    if not d or not os.path.isdir(d):
        return {"files": 0, "newest_ns": None}
    for dirpath, _dirs, names in os.walk(d):
        for name in names:
            if dirpath == d and name in ENGINE_OWN:
                continue
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            count += 1
            newest = st.st_mtime_ns if newest is None else max(newest, st.st_mtime_ns)
    return {"files": count, "newest_ns": newest}


def seed_script_dir(r):
    """``out_mode: local_sync``: a script dir left empty (a new pod, a wiped disk) gets the
    durable copy of its earlier files first. Returns True when it did."""
    src, dest = r["out_dir"], r.get("script_out_dir") or r["out_dir"]
    if os.path.normpath(src) == os.path.normpath(dest) or earlier_files(dest)["files"]:
        return False
    if not earlier_files(src)["files"]:
        return False
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda where, names: [n for n in names if os.path.normpath(where) == os.path.normpath(src)
                                                 and n in ENGINE_OWN])
    return True


def attempt_of(old_status, r):
    """This launch's attempt: one more than the most the run had, here (its
    ``status.json``) or anywhere (``attempts_before`` in its plan: the client's count,
    e.g. of a run moved from another pod)."""
    before = max(int((old_status or {}).get("attempt") or 0), int(r.get("attempts_before") or 0))
    return before + 1


def launch_with_resume(r, attempt):
    """``(argv, env additions, resuming)`` of run ``r`` (a plan dict) at ``attempt``."""
    seed_script_dir(r)
    resuming = earlier_files(r.get("script_out_dir") or r["out_dir"])["files"] > 0 or \
        earlier_files(r["out_dir"])["files"] > 0
    env = {"WF_ATTEMPT": str(attempt)}
    argv = list(r["argv"])
    if resuming:
        env["WF_RESUME"] = "1"
        argv += list(r.get("resume_argv") or [])
    return argv, env, resuming
