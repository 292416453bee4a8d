"""The seed workflow's flat env names (SPEC §2), each standing for one config key.

Users coming from the seed's ``workflow.env`` keep their names; ``WF__SECTION__KEY``
spells any key. When both name the same key in the same source, ``WF__`` wins.
"""

from __future__ import annotations

from typing import Dict

ALIASES: Dict[str, str] = {
    "LIUM_TARGET": "pod.target",
    "OPS_DEFAULT_HOST": "pod.host",
    "REPO_URL": "checkout.repo_url",
    "CHECKOUT_BRANCH": "checkout.branch",
    "CHECKOUT_PR": "checkout.pr",
    "OPS_REMOTE_REPO": "remote.workdir",
    "OPS_REMOTE_OUTPUTS_DIR": "remote.outputs_dir",
    "DATA_DIR": "remote.data_dir",
    "REMOTE_PYTHON_BIN": "remote.python",
    "VENV_RECREATE": "checkout.venv_recreate",
    "WF_FSM_ENFORCE": "fsm.enforce",
    "WF_STATE_FILE": "fsm.state_file",
    "WF_TMUX_SESSION": "tasks.tmux_session",
    "SWEEP_TMUX_SESSION": "sweep.tmux_session",
    "SWEEP_CSV": "sweep.csv",
    "RUN_TIMEOUT_SECS": "sweep.run_timeout_secs",
    "TASK_TIMEOUT_SECS": "tasks.timeout_secs",
    "RUN_OUT_MODE": "sweep.out_mode",
    "RUN_OUT_LOCAL_ROOT": "sweep.local_root",
    "SYNC_INTERVAL_SECS": "sweep.sync_interval_secs",
    "AUTO_INSTALL_PREREQS": "bootstrap.install_prereqs",
    "BOOTSTRAP_SCRIPT": "bootstrap.script",
    "WANDB_SETUP_SCRIPT": "bootstrap.wandb_setup_script",
    "SWEEP_WANDB": "sweep.wandb.enabled",
    "LOCAL_ARTIFACTS_DIR": "local.artifacts_dir",
}

#: Prefix of the generic override: ``WF__SWEEP__ON_FAILURE=stop``.
PREFIX = "WF__"


def env_name(dotted: str) -> str:
    """The ``WF__`` spelling of a key: ``sweep.on_failure`` -> ``WF__SWEEP__ON_FAILURE``."""
    return PREFIX + "__".join(part.upper() for part in dotted.split("."))
