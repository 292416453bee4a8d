"""Tracked work on the pod, one directory = one job: the one import for its users.

Any directory holding ``command.sh`` / ``status.json`` / ``stdout.log`` (a tracked task
under ``_tasks/<id>/``, a sweep run under ``<outputs_dir>/<run_id>/``) is driven by the
same code, split by job:

* ``job_status``: the file names, states and the status file (atomic writes, the lock);
* ``job_launch``: ``prepare`` (``command.sh`` + ``pending``) and ``launch`` (the wrapper,
  the environment through a FIFO);
* ``job_wrapper``: ``wrap_main``, the process that runs the command to its end;
* ``job_scan``: /proc scans (is the wrapper alive, which processes are the job's);
* ``job_control``: ``refresh_status`` (the repair pass every reader runs), ``wait``,
  ``terminate``;
* ``job_log``: ``tail`` and ``follow`` of ``stdout.log``.

This module gathers their public names, so a caller writes ``procs.launch(...)``.
"""

from .job_control import refresh_status, terminate, wait
from .job_launch import ENGINE_SECRETS, agent_argv, job_env, launch, prepare, tmux_socket_name
from .job_log import follow, tail
from .job_scan import job_pids, proc_cmdline, proc_stat, wrapper_alive
from .job_status import (ACTIVE, CANCELLED, COMMAND_FILE, FAILED, FIFO_FILE, GRACE_SECS, ID_RE, LOCK_FILE, LOG_FILE,
                         LOST, MARK_VAR, PENDING, RUNNING, STATUS_FILE, SUCCESS, TERMINAL, TIMED_OUT, WRAP_COMMAND,
                         WRAPPER_LOG, duration_secs, is_terminal, read_status, status_path, update_status, user_home,
                         validate_id)
from .job_wrapper import log_note, wrap_main

__all__ = [
    "ACTIVE", "CANCELLED", "COMMAND_FILE", "ENGINE_SECRETS", "FAILED", "FIFO_FILE", "GRACE_SECS", "ID_RE",
    "LOCK_FILE", "LOG_FILE", "LOST", "MARK_VAR", "PENDING", "RUNNING", "STATUS_FILE", "SUCCESS", "TERMINAL",
    "TIMED_OUT", "WRAP_COMMAND", "WRAPPER_LOG", "agent_argv", "duration_secs", "follow", "is_terminal", "job_env",
    "job_pids", "launch", "log_note", "prepare", "proc_cmdline", "proc_stat", "read_status", "refresh_status",
    "status_path", "tail", "terminate", "tmux_socket_name", "update_status", "user_home", "validate_id", "wait",
    "wrap_main", "wrapper_alive",
]
