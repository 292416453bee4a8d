"""Turn validated sweep rows + the config into each run's exact launch (SPEC §6).

Planning happens on the client; the pod-side runner is stdlib-only and receives the
plan as JSON (``RunPlan.to_dict``/``to_json``, read back with ``RunPlan.from_dict``).
Every argument is its own argv element: nothing here is ever joined for a shell.

    torchrun: torchrun --standalone --nproc_per_node=<n> <entrypoint> <args...> <overrides...>
    python:   python <entrypoint> <args...> <overrides...>

``<args>`` is ``sweep.args`` with ``{config}``, ``{seed}``, ``{out_dir}``, ``{data_dir}``
and ``{run_id}`` filled (``{{``/``}}`` are literal braces). The runner runs ``argv`` in
``workdir`` with ``env`` added to its own environment (the venv first on ``PATH``) and
sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigns (``gpus`` of them; ``""`` on CPU).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from workflow.errors import ConfigError, InputError
from workflow.sweep.csvfile import SweepRow, validate_run_id

PLACEHOLDERS = ("config", "seed", "out_dir", "data_dir", "run_id")
LAUNCHERS = ("torchrun", "python")
_FIELD_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class RunPlan:
    """One run, planned: what the runner executes, where, and with what."""

    run_id: str
    argv: Tuple[str, ...]
    """The exact command, one element per argument; never passed through a shell."""
    env: Mapping[str, str]
    """Added to the runner's environment: ``WF_RUN_ID``, ``WF_OUT_DIR``, ``WF_SEED`` (+ W&B).
    ``CUDA_VISIBLE_DEVICES`` is not here: the runner sets it to the GPUs it assigns."""
    workdir: str
    """Absolute directory on the pod the command runs in (checkout / ``sweep.workdir``)."""
    gpus: int
    """GPUs the run takes (0: CPU); the runner packs runs on disjoint GPU sets."""
    timeout_secs: Optional[int]
    """Wall-clock limit (row's ``timeout_secs``, else ``sweep.run_timeout_secs``); None: none."""
    out_dir: str
    """The durable run directory ``<outputs_dir>/<run_id>`` (status.json, summary.json, stdout.log)."""
    config_path: str
    """The row's config as an absolute path on the pod (checked to exist before launch)."""
    script_out_dir: str = ""
    """Where the script writes (``{out_dir}``, ``WF_OUT_DIR``): ``out_dir``, or
    ``<sweep.local_root>/<run_id>`` with ``out_mode: local_sync``."""
    seed: int = 0
    line: int = 0
    """The row's line in the sweep CSV."""
    resume_argv: Tuple[str, ...] = ()
    """``sweep.resume_args``, filled: follow ``argv`` when the run resumes from earlier files."""
    nodes: int = 1
    """Pods the run spans at once (SPEC §9); this plan is one node's launch when > 1."""
    node_rank: int = 0
    """Which node of the run this plan launches (0: the node whose run dir is the run's)."""

    def __post_init__(self):
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        object.__setattr__(self, "resume_argv", tuple(str(a) for a in self.resume_argv))
        object.__setattr__(self, "env", MappingProxyType({str(k): str(v) for k, v in dict(self.env).items()}))
        if not self.script_out_dir:
            object.__setattr__(self, "script_out_dir", self.out_dir)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able data for the pod-side runner."""
        return {
            "run_id": self.run_id,
            "argv": list(self.argv),
            "env": dict(self.env),
            "workdir": self.workdir,
            "gpus": self.gpus,
            "timeout_secs": self.timeout_secs,
            "out_dir": self.out_dir,
            "script_out_dir": self.script_out_dir,
            "config_path": self.config_path,
            "seed": self.seed,
            "line": self.line,
            "resume_argv": list(self.resume_argv),
            "nodes": self.nodes,
            "node_rank": self.node_rank,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunPlan":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def plans_to_json(plans: Iterable[RunPlan]) -> str:
    """The whole plan as one JSON document: ``{"runs": [...]}``."""
    return json.dumps({"runs": [p.to_dict() for p in plans]}, indent=2, sort_keys=True)


def select_rows(
    rows: Sequence[SweepRow],
    *,
    match: Optional[str] = None,
    start_at: Optional[str] = None,
    limit: Optional[int] = None,
) -> List[SweepRow]:
    """``--start-at RUN`` (drop rows before it, in CSV order), then ``--match S``
    (substring of run_id), then ``--limit N``."""
    selected = list(rows)
    if start_at:
        validate_run_id(start_at)
        ids = [r.run_id for r in selected]
        if start_at not in ids:
            raise InputError(f"--start-at: no run '{start_at}' in the sweep CSV",
                             hint="run ids: " + ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""))
        selected = selected[ids.index(start_at):]
    if match:
        selected = [r for r in selected if match in r.run_id]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputError(f"--limit must be a positive integer, got {limit!r}")
        selected = selected[:limit]
    return selected


def fill_placeholders(template: str, values: Mapping[str, str], *, what: str = "sweep.args") -> str:
    """``template`` with ``{name}`` replaced from ``values``; ``ConfigError`` on an unknown
    or unbalanced placeholder. No ``str.format`` (no attribute or index lookups)."""

    def sub(m: "re.Match[str]") -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = m.group(1)
        if name is None:
            raise ConfigError(f"{what}: unbalanced brace in {template!r}", hint="write {{ or }} for a literal brace")
        if name not in values:
            raise ConfigError(f"{what}: unknown placeholder {{{name}}} in {template!r}",
                              hint="known: " + ", ".join("{%s}" % p for p in PLACEHOLDERS))
        return values[name]

    return _FIELD_RE.sub(sub, template)


def _sweep(config: Any) -> Mapping[str, Any]:
    try:
        return config.get("sweep")
    except KeyError:
        raise ConfigError("config has no 'sweep' section") from None


def plan_runs(
    rows: Sequence[SweepRow],
    config: Any,
    *,
    outputs_dir: str,
    data_dir: str,
    match: Optional[str] = None,
    start_at: Optional[str] = None,
    limit: Optional[int] = None,
    gpu_count: int = 0,
    workdir: Optional[str] = None,
) -> List[RunPlan]:
    """The exact launch of every selected row.

    ``outputs_dir``, ``data_dir`` and ``workdir`` are absolute paths on the pod (``~``
    already expanded; ``workdir`` defaults to ``remote.workdir``/``sweep.workdir``).
    ``gpu_count`` is how many GPUs the pod has (0: CPU). With GPUs a run takes its row's
    ``gpus``, else ``sweep.gpus_per_run``, else all of them, and ``nproc_per_node`` is
    that number; on CPU every run takes ``sweep.nproc_per_node`` processes and 0 GPUs.
    Raises ``InputError`` (bad selection, a row asking for more GPUs than the pod has)
    or ``ConfigError`` (bad ``sweep.*`` values).
    """
    sweep = _sweep(config)
    launcher = sweep.get("launcher", "torchrun")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"sweep.launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    entrypoint = sweep.get("entrypoint")
    if not entrypoint or not isinstance(entrypoint, str):
        raise ConfigError("sweep.entrypoint is empty: name the training script, e.g. train.py")
    args = list(sweep.get("args") or [])
    if not all(isinstance(a, str) for a in args):
        raise ConfigError(f"sweep.args must be a list of strings, got {args!r}")
    resume_args = list(sweep.get("resume_args") or [])
    if not all(isinstance(a, str) for a in resume_args):
        raise ConfigError(f"sweep.resume_args must be a list of strings, got {resume_args!r}")
    cpu_nproc = _positive_int(sweep.get("nproc_per_node", 1), "sweep.nproc_per_node")
    default_gpus = sweep.get("gpus_per_run")
    if default_gpus is not None:
        default_gpus = _positive_int(default_gpus, "sweep.gpus_per_run")
    default_nodes = _positive_int(sweep.get("nodes") or 1, "sweep.nodes")
    default_timeout = sweep.get("run_timeout_secs")
    if default_timeout is not None:
        default_timeout = _positive_int(default_timeout, "sweep.run_timeout_secs")
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 0:
        raise InputError(f"gpu_count must be a non-negative integer, got {gpu_count!r}")

    if workdir is None:
        remote_workdir = config.get("remote.workdir", None)
        if not remote_workdir:
            raise ConfigError("remote.workdir is not set")
        workdir = posixpath.join(remote_workdir, sweep.get("workdir") or ".")
    workdir = posixpath.normpath(workdir)
    local_sync = sweep.get("out_mode", "durable") == "local_sync"
    local_root = sweep.get("local_root") or posixpath.join(workdir, "out")

    wandb = sweep.get("wandb") or {}
    too_big, python_many = [], []
    plans: List[RunPlan] = []
    for row in select_rows(rows, match=match, start_at=start_at, limit=limit):
        if gpu_count:
            gpus = row.gpus or default_gpus or gpu_count
            if gpus > gpu_count:
                too_big.append(f"line {row.line}: run {row.run_id} asks for {gpus} GPUs, the pod has {gpu_count}")
                continue
            nproc = gpus
        else:
            gpus, nproc = 0, cpu_nproc
        nodes = row.nodes or default_nodes
        if nodes > 1 and launcher != "torchrun":
            python_many.append(f"line {row.line}: run {row.run_id} spans {nodes} nodes")
        out_dir = posixpath.join(outputs_dir, row.run_id)
        script_out_dir = posixpath.join(local_root, row.run_id) if local_sync else out_dir
        values = {
            "config": row.config,
            "seed": str(row.seed),
            "out_dir": script_out_dir,
            "data_dir": data_dir,
            "run_id": row.run_id,
        }
        filled = [fill_placeholders(a, values) for a in args]
        if launcher == "torchrun":
            argv = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", entrypoint, *filled, *row.overrides]
        else:
            argv = ["python", entrypoint, *filled, *row.overrides]
        env = {"WF_RUN_ID": row.run_id, "WF_OUT_DIR": script_out_dir, "WF_SEED": str(row.seed)}
        if wandb.get("enabled"):
            env["WANDB_NAME"] = row.run_id
            if wandb.get("project"):
                env["WANDB_PROJECT"] = str(wandb["project"])
            if wandb.get("group"):
                env["WANDB_RUN_GROUP"] = str(wandb["group"])
        else:
            env["WANDB_MODE"] = "disabled"
        plans.append(RunPlan(
            run_id=row.run_id,
            argv=tuple(argv),
            env=env,
            workdir=workdir,
            gpus=gpus,
            timeout_secs=row.timeout_secs or default_timeout,
            out_dir=out_dir,
            config_path=posixpath.normpath(posixpath.join(workdir, row.config)),
            script_out_dir=script_out_dir,
            seed=row.seed,
            line=row.line,
            resume_argv=tuple(fill_placeholders(a, values, what="sweep.resume_args") for a in resume_args),
            nodes=nodes,
        ))
    if python_many:
        raise ConfigError("a run on several nodes needs sweep.launcher: torchrun (its c10d rendezvous joins them):\n  "
                          + "\n  ".join(python_many), hint="set sweep.launcher: torchrun, or nodes: 1")
    if too_big:
        raise InputError("runs ask for more GPUs than the pod has:\n  " + "\n  ".join(too_big),
                         hint="lower the row's gpus column or sweep.gpus_per_run")
    return plans


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value
