"""Built-in defaults: the lowest config source (SPEC §2).

The single place defaults live; ``schema.json`` says only what each key may hold.
Path defaults that depend on the provider (``remote.*``) are filled by the loader.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

DEFAULTS: Dict[str, Any] = {
    "project": "podflow",
    "progress": "milestones",
    "pod": {
        "provider": "local",
        "host": None,
        "port": 22,
        "user": None,
        "identity_file": "~/.ssh/id_ed25519",
        "known_hosts": ".podflow/known_hosts",
        "connect_timeout_secs": 20,
        "keepalive_secs": 600,
        "target": None,
        "offer": {
            "preset": None,
            "gpu": None,
            "num_gpus": 1,
            "min_gpu_ram_gb": None,
            "min_reliability": None,
            "max_price_per_hour": None,
            "regions": [],
        },
        "image": None,
        "template_id": None,
        "disk_gb": 50,
        "volume": None,
        "ttl": None,
        "price_per_hour": None,
        "max_cost_usd": None,
        "ready_timeout_secs": 600,
        "max_offer_attempts": 5,
        "count": 1,
        "network": None,
        "hosts": [],
    },
    "remote": {
        "workdir": None,
        "outputs_dir": None,
        "data_dir": None,
        "python": "python3",
        "env": {},
    },
    "bootstrap": {
        "install_prereqs": False,
        "apt_packages": ["git", "tmux", "rsync", "python3-venv"],
        "script": None,
        "wandb_setup_script": None,
    },
    "checkout": {
        "repo_url": None,
        "branch": None,
        "pr": None,
        "expect_sha": None,
        "force_clean": False,
        "venv_recreate": False,
        "install": None,
        "require_torch": True,
        "require_cuda": "auto",
    },
    "data": {"checks": [], "download": None},
    "sweep": {
        "csv": "sweeps/sweep.csv",
        "workdir": ".",
        "entrypoint": "train.py",
        "launcher": "torchrun",
        "args": ["{config}", "--seed={seed}", "--out_dir={out_dir}"],
        "gpus_per_run": None,
        "nproc_per_node": 1,
        "nodes": 1,
        "run_timeout_secs": None,
        "on_failure": "continue",
        "max_retries": 0,
        "out_mode": "durable",
        "local_root": None,
        "sync_interval_secs": 60,
        "mirror_interval_secs": 60,
        "resume_args": [],
        "tmux_session": None,
        "wandb": {"enabled": False, "project": None, "group": None},
        "metrics": {"patterns": [], "primary": None, "mode": "min"},
    },
    "fsm": {"enforce": True, "state_file": None},
    "tasks": {"tmux_session": None, "timeout_secs": None},
    "pool": {"down_after_secs": 120, "recover": True, "replace": False},
    "autostop": {"idle_minutes": None, "action": "stop", "command": None, "gpu_util_below": 5,
                 "allow_account_key": False},
    "notify": {"on": ["sweep_completed", "run_failed", "autostop", "budget"]},
    "local": {"artifacts_dir": "artifacts"},
}


def defaults() -> Dict[str, Any]:
    """A fresh deep copy of the defaults (callers may mutate it)."""
    return copy.deepcopy(DEFAULTS)
