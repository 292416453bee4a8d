"""``bootstrap`` and ``checkout``, the engine's side (SPEC §2 bootstrap.*, checkout.*, data.*; §4).

Both run on the pod as tracked tasks (``bootstrap-<UTC stamp>``, ``checkout-<stamp>``):

1. the config is turned into a non-secret spec (bad config: ConfigError, exit 2,
   before anything runs);
2. the state machine is asked first (``Fsm.check``: exit 3 when refused);
3. one podagent call (``prepare.start``) writes the spec on the pod and starts the task,
   which runs ``podagent bootstrap-run|checkout-run SPEC`` (``workflow/agent/bootstrap.py``, ``checkout.py``);
4. its progress is shown at the chosen level (``workflow.progress``), or, with
   ``detach``, the task id is printed and the caller comes back with ``wf task-wait``;
5. the task writes ``result.json`` and, only when every step succeeded, moves the state
   itself (compare-and-set against the state seen in 2), so detached and attached runs
   end the same way and a failure never moves the state.

A failed step raises :class:`StepFailed` (exit 1) naming the step, what failed, what to
do and the tail of the task log. Secrets never go into the spec, a command line or a
log: the only one used (``WANDB_API_KEY``, for the W&B setup script) travels in the
task's environment, which the podagent hands over through a FIFO.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

from workflow import progress as progress_mod
from workflow import tracked
from workflow.errors import CheckFailed, ConfigError, TransitionRefused
from workflow.fsm import TABLE, who

KINDS = ("bootstrap", "checkout")

Printer = Callable[[str], Any]


class StepFailed(CheckFailed):
    """A bootstrap/checkout step failed on the pod (exit 1)."""

    def __init__(self, kind: str, task_id: str, step: Optional[str], message: str, *,
                 hint: Optional[str] = None, tail: str = ""):
        self.kind, self.task_id, self.step = kind, task_id, step
        text = f"{kind} failed at step '{step or '?'}': {message}"
        if tail.strip():
            text += f"\n--- last lines of the task log ({task_id}) ---\n{tail.rstrip()}"
        more = f"wf task-logs --id {task_id}  shows the whole log"
        super().__init__(text, hint=f"{hint}\n  {more}" if hint else more)


@dataclass(frozen=True)
class Outcome:
    """How a bootstrap/checkout ended (or that it was detached)."""

    kind: str
    task_id: str
    detached: bool = False
    state: Optional[str] = None
    """The state the task moved to (None when detached)."""
    result: Mapping[str, Any] = field(default_factory=dict)
    """``result.json`` of the task: steps, sha, what ran, ..."""


# ---------------------------------------------------------------- specs


def _common(cfg) -> Dict[str, Any]:
    return {"python": cfg.get("remote.python", "python3") or "python3"}


def bootstrap_spec(cfg) -> Dict[str, Any]:
    """The non-secret spec of ``bootstrap`` from the config."""
    from workflow.money import watchdog

    spec = _common(cfg)
    pkgs = cfg.get("bootstrap.apt_packages", None) or []
    spec.update(
        install_prereqs=bool(cfg.get("bootstrap.install_prereqs", False)),
        apt_packages=[str(p) for p in pkgs],
        script=cfg.get("bootstrap.script", None) or None,
        wandb_setup_script=cfg.get("bootstrap.wandb_setup_script", None) or None,
        wandb_enabled=bool(cfg.get("sweep.wandb.enabled", False)),
        notify_requirement=notify_requirement() if watchdog.notify_urls(cfg) else None,
    )
    return spec


def notify_requirement() -> str:
    """What the watchdog needs to send notifications: podflow's ``notify`` extra's Apprise
    requirement, as the installed package declares it (``apprise>=1.9``)."""
    from importlib import metadata

    try:
        declared = metadata.requires("podflow") or []
    except metadata.PackageNotFoundError:
        declared = []
    for req in declared:
        name, _, marker = req.partition(";")
        if name.strip().lower().startswith("apprise") and "notify" in marker:
            return name.strip()
    return "apprise"


def _cuda(cfg):
    """The spec's ``require_cuda``: true, false, or "if-driver" (the pod's agent then
    requires CUDA only where the host has nvidia-smi); see ``providers.cuda_policy``."""
    from workflow.providers import CUDA_IF_DRIVER, CUDA_REQUIRED, cuda_policy

    policy = cuda_policy(cfg)
    return policy if policy == CUDA_IF_DRIVER else policy == CUDA_REQUIRED


def checkout_spec(cfg) -> Dict[str, Any]:
    """The non-secret spec of ``checkout``; ConfigError (exit 2) when it cannot run."""
    repo_url = cfg.get("checkout.repo_url", None)
    if not repo_url or not str(repo_url).strip():
        raise ConfigError("checkout.repo_url is not set: checkout needs the repository to clone",
                          hint="set checkout.repo_url (any URL or path git accepts), or REPO_URL=...")
    branch, pr = cfg.get("checkout.branch", None), cfg.get("checkout.pr", None)
    if branch and pr:
        raise ConfigError(f"checkout.branch ({branch}) and checkout.pr ({pr}) are both set; set one",
                          hint="unset CHECKOUT_BRANCH or CHECKOUT_PR")
    workdir = cfg.get("remote.workdir", None)
    if not workdir:
        raise ConfigError("remote.workdir is not set: checkout needs a directory on the pod")
    checks = []
    for check in cfg.get("data.checks", None) or []:
        item = {"path": str(check["path"])}
        if check.get("min_files") is not None:
            item["min_files"] = int(check["min_files"])
        checks.append(item)
    data_dir = cfg.get("remote.data_dir", None)
    if any(not c["path"].startswith(("/", "~")) for c in checks) and not data_dir:
        raise ConfigError("data.checks has relative paths but remote.data_dir is not set")
    spec = _common(cfg)
    spec.update(
        repo_url=str(repo_url).strip(),
        branch=branch or None,
        pr=int(pr) if pr else None,
        expect_sha=(cfg.get("checkout.expect_sha", None) or None),
        force_clean=bool(cfg.get("checkout.force_clean", False)),
        venv_recreate=bool(cfg.get("checkout.venv_recreate", False)),
        install=cfg.get("checkout.install", None) or None,
        require_torch=bool(cfg.get("checkout.require_torch", True)),
        require_cuda=_cuda(cfg),
        workdir=str(workdir),
        data_dir=data_dir,
        data_checks=checks,
        data_download=cfg.get("data.download", None) or None,
    )
    return spec


def build_spec(kind: str, cfg) -> Dict[str, Any]:
    if kind == "bootstrap":
        return bootstrap_spec(cfg)
    if kind == "checkout":
        return checkout_spec(cfg)
    raise ValueError(kind)


def task_env(kind: str, cfg, environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The task's extra environment (on top of ``remote.env``, added by the task layer):
    ``WANDB_API_KEY`` for the W&B setup script, only when W&B is on."""
    env: Dict[str, str] = {}
    if kind == "bootstrap" and cfg.get("sweep.wandb.enabled", False):
        key = cfg.secret("WANDB_API_KEY", environ)
        if key:
            env["WANDB_API_KEY"] = key
    return env


def new_task_id(kind: str, now: Optional[datetime.datetime] = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{kind}-{now.strftime('%Y%m%d-%H%M%S')}"


def resolve_commit(cfg, transport) -> str:
    """The commit ``checkout.pr`` / ``checkout.branch`` / the default branch names right now,
    read on the pod with one ``git ls-remote`` (the pod reaches the repository as its
    checkout does). A pool resolves it once and every pod checks out that SHA (SPEC §8)."""
    spec = checkout_spec(cfg)
    if spec["pr"]:
        ref, what = f"refs/pull/{spec['pr']}/head", f"PR {spec['pr']}"
    elif spec["branch"]:
        ref, what = f"refs/heads/{spec['branch']}", f"branch {spec['branch']}"
    else:
        ref, what = "HEAD", "the default branch"
    env = {str(k): str(v) for k, v in dict(cfg.get("remote.env", None) or {}).items()}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true", LC_ALL="C")
    res = transport.run(["git", "ls-remote", "--", spec["repo_url"], ref], env=env, timeout=120)
    for line in res.stdout.splitlines():
        sha, _, name = line.strip().partition("\t")
        if name == ref and re.fullmatch(r"[0-9a-f]{40}", sha):
            return sha
    tail = (res.stdout + res.stderr).strip()[-500:]
    raise CheckFailed(f"cannot tell which commit {what} is (git ls-remote exit {res.exit_code})"
                      + (f": {tail}" if tail else ""),
                      hint="check checkout.repo_url / branch / pr, and that the pod can reach the repository")


def pin_commit(pods) -> tuple:
    """``(sha, pods that may check out, failures)`` for ``checkout`` on ``pods``.

    One pod: nothing to pin (``None``), as ever. Several: each is asked whether it may
    check out (refusals are its failures), then the commit is resolved once on the first
    that may, and every pod checks out that SHA; when it cannot be resolved, no pod
    checks out and each carries that error."""
    from workflow import pool, runtime
    from workflow.errors import PodflowError

    if len(pods) == 1:
        return None, tuple(pods), []
    checked = pool.fan_out(pods, lambda pod: runtime.fsm().check("checkout"))
    refused = [r for r in checked if not r.ok]
    ready = tuple(r.pod for r in checked if r.ok)
    if not ready:
        return None, ready, refused
    try:
        with runtime.on_pod(ready[0]):
            return resolve_commit(runtime.config(), runtime.transport()), ready, refused
    except PodflowError as exc:
        return None, (), refused + [pool.PodResult(p, error=exc) for p in ready]


# ---------------------------------------------------------------- running


def start(kind: str, *, cfg=None, agent=None, fsm=None, sha: Optional[str] = None) -> tracked.TaskStatus:
    """Validate, ask the state machine, start the task; returns its status (running).
    ``sha``: the commit ``checkout`` must check out (a pool's, resolved once)."""
    from workflow import runtime

    cfg = cfg or runtime.config()
    spec = build_spec(kind, cfg)  # exit 2 before anything touches the pod
    if sha:
        spec["sha"] = sha
    fsm = fsm or runtime.fsm()
    agent = agent or runtime.agent()
    seen = fsm.check(kind)
    spec["fsm"] = {"to": TABLE[kind][1].value, "trigger": kind, "expect": [seen],
                   "enforce": bool(fsm.enforce), "by": who()}
    settings = tracked.TaskSettings.from_config(cfg)
    env = dict(settings.env)
    env.update(task_env(kind, cfg))
    doc = agent.call("prepare.start", timeout=90, kind=kind, id=new_task_id(kind), spec=spec, env=env,
                     session=settings.session, timeout_secs=settings.timeout_secs)
    return tracked.TaskStatus.from_doc(doc)


def finish(kind: str, task_id: str, agent, *, log_shown: bool = False) -> Outcome:
    """Read the ended task's result: the Outcome on success, the typed error otherwise.
    The error carries the log's tail unless ``log_shown`` (realtime progress printed it)."""
    doc = agent.call("prepare.result", timeout=60, id=task_id, tail=30)
    final = tracked.TaskStatus.from_doc(doc["status"])
    result = doc.get("result") or {}
    if final.ok and result.get("ok"):
        return Outcome(kind, task_id, state=result.get("state"), result=result)
    if not result:  # the runner never got to write it: killed, timed out, lost
        raise tracked.TaskFailed(final)
    if result.get("error_kind") == "refused":
        raise TransitionRefused(kind, result.get("current", "?"), result.get("allowed", []))
    tail = "" if log_shown else result.get("tail") or _unsaid(final.log_tail or "", kind, result.get("hint"))
    raise StepFailed(kind, task_id, result.get("step"), result.get("message") or "failed",
                     hint=result.get("hint"), tail=tail)


def _closing(kind: str, line: str) -> bool:
    """The runner's own FAILED milestone (``workflow.agent.step_runner``), which the error restates."""
    return line.startswith(f"{progress_mod.MILESTONE_PREFIX}{kind} FAILED at ")


def _unsaid(tail: str, kind: str, hint: Optional[str]) -> str:
    """The task log's tail without the runner's closing lines (its FAILED milestone and
    ``hint:`` line): the error states both, and the hint is said once."""
    lines = tail.rstrip("\n").split("\n")
    if hint and lines and lines[-1] == f"hint: {hint}":
        lines.pop()
    if lines and _closing(kind, lines[-1]):
        lines.pop()
    return "\n".join(lines)


def _without_closing_hint(kind: str, sink: progress_mod.Sink) -> progress_mod.LineFilter:
    """The live log minus the runner's ``hint:`` line after its FAILED milestone: the
    error printed next says the hint (once)."""
    after_failure = [False]

    def keep(line: str) -> bool:
        drop = after_failure[0] and line.startswith("hint: ")
        after_failure[0] = _closing(kind, line)
        return not drop

    return progress_mod.LineFilter(sink, keep)


def run(kind: str, *, progress: Optional[str] = None, detach: bool = False,
        echo: Printer = print, sink: Optional[progress_mod.Sink] = None, sha: Optional[str] = None) -> Outcome:
    """``wf bootstrap`` / ``wf checkout``: start, follow at ``progress``, finish."""
    from workflow import runtime

    cfg = runtime.config()
    how = progress_mod.level(progress, default=cfg.get("progress", "milestones") or "milestones")
    status = start(kind, cfg=cfg, sha=sha)
    task_id = status.id
    if detach:
        echo(task_id)
        echo(f"{kind} runs on the pod as task {task_id}; the state moves when it succeeds.\n"
             f"  wait: wf task-wait --id {task_id}\n  log:  wf task-logs --id {task_id} --follow")
        return Outcome(kind, task_id, detached=True)
    agent = runtime.agent()
    if how != "quiet":
        echo(f"{kind}: task {task_id} started on the pod (progress: {how})")
    live = _without_closing_hint(kind, sink or progress_mod.stdout_sink)
    try:
        progress_mod.follow(agent, task_id, how, sink=live.feed)
    except KeyboardInterrupt:
        echo(f"\n{kind} goes on on the pod as task {task_id}: wf task-wait --id {task_id}")
        raise
    finally:
        live.close()
    outcome = finish(kind, task_id, agent, log_shown=how == "realtime")
    echo(summary(outcome))
    return outcome


def summary(outcome: Outcome) -> str:
    r = outcome.result
    secs = r.get("duration_secs")
    took = f", {secs:.1f}s" if isinstance(secs, (int, float)) else ""
    if outcome.kind == "checkout":
        what = f"PR {r['pr']}" if r.get("pr") else f"branch {r.get('branch')}"
        return (f"checkout: {outcome.state} at {str(r.get('sha'))[:12]} ({what}) in {r.get('workdir')} "
                f"(task {outcome.task_id}{took})")
    extra = " (already done; only checked)" if r.get("already") else ""
    if r.get("installed"):
        extra += f"; installed {', '.join(r['installed'])}"
    return f"bootstrap: {outcome.state}{extra} (task {outcome.task_id}{took})"
