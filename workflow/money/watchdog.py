"""The client side of the watchdog on the pod (``workflow/agent/autostop.py``).

``pod-up`` and ``bootstrap`` (re)start it with the settings made here: ``autostop.*``,
``pod.ttl`` as a deadline, ``pod.max_cost_usd`` as the pool's budget: the spend of every
pod this project has had (``wf cost``'s total) and the price per hour of the running
ones, from the ledger (``pool_spend``; a pool's ``pod-up`` starts the watchdogs once
every pod is up, so the figures hold all of them). The settings travel as the agent request on the SSH channel's
stdin and stay in the watchdog's memory. The account API key is among them only with
``autostop.allow_account_key: true``; otherwise the watchdog acts with the credential
the provider put into the pod itself (RunPod, Vast), or cannot act through the API
(Lium: its own server-side termination covers ``pod.ttl``), which ``pod-status`` says.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from workflow.errors import ConfigError
from workflow.money import ledger, spend

#: providers that put a pod-scoped API credential into the pod
POD_SCOPED = ("runpod", "vastai")


def _base_url(provider: str) -> Optional[str]:
    if provider == "runpod":
        base = os.environ.get("RUNPOD_API_BASE_URL")
        return base[: -len("/v2")] if base and base.rstrip("/").endswith("/v2") else base
    return os.environ.get({"vastai": "VAST_URL", "lium": "LIUM_BASE_URL"}.get(provider, ""), None)


#: request keys that hold secrets: never written or printed
SECRET_KEYS = ("account_key", "notify_urls")


def notify_urls(config) -> list:
    """``WF_NOTIFY_URLS``: Apprise URLs separated by spaces or commas (a secret)."""
    import re

    return [u for u in re.split(r"[\s,]+", config.secret("WF_NOTIFY_URLS") or "") if u]


def stops_pods(config) -> bool:
    """Whether the watchdog is asked to end pods: idle autostop, a ttl or a budget."""
    return any(config.get(k, None) not in (None, "", 0) for k in ("autostop.idle_minutes", "pod.ttl", "pod.max_cost_usd"))


def configured(config) -> bool:
    """Whether anything asks for a watchdog: ending pods, or notifications."""
    return stops_pods(config) or bool(notify_urls(config))


def check(config) -> None:
    """Refuse (exit 2) settings the watchdog could not carry out, before anything is rented."""
    if not stops_pods(config):
        return
    action = config.get("autostop.action", "stop")
    if action == "command" and not config.get("autostop.command", None):
        raise ConfigError("autostop.action is 'command' but autostop.command is not set",
                          hint="set autostop.command, e.g. 'sudo poweroff'")
    if config.pod.provider in ("ssh", "local") and action != "command":
        raise ConfigError(f"autostop.action {action!r} needs a cloud provider; the {config.pod.provider} provider "
                          "can only run autostop.command", hint="set autostop.action: command and autostop.command")
    if config.pod.provider == "runpod" and config.get("pod.network", None) == "cluster" and action != "command":
        raise ConfigError(f"autostop.action {action!r} cannot end the pods of a RunPod instant cluster: they are "
                          "deleted only with their cluster (RunPod answers 409 to a pod's own stop or delete)",
                          hint="end the cluster with 'wf pod-down --destroy'; remove autostop.idle_minutes, "
                               "pod.ttl and pod.max_cost_usd, or set autostop.action: command")


def pool_spend(config, now: Optional[float] = None) -> Dict[str, Any]:
    """The pool's spend as the ledger tells it ``at`` now: what every pod of this project
    has cost so far, and what its running pods cost per hour from now on. Every pod's
    watchdog gets the same figures and counts on from them, so all of them see the
    pool's budget run out at the same moment, with no client and no talk between pods."""
    now = time.time() if now is None else now
    spends = ledger.fold(ledger.entries(config), now)
    running = [s for s in spends if s.state == "running"]
    return {"spent_usd": ledger.totals(spends)[0], "at": now, "pods_running": len(running),
            "rate_per_hour": round(sum(s.price_per_hour or 0.0 for s in running), 6)}


def check_budget(config) -> None:
    """Refuse (exit 2) to bring a pod up when the pool's budget is already spent: its
    watchdog would end it at once."""
    budget = config.get("pod.max_cost_usd", None)
    if not budget:
        return
    spent = pool_spend(config)["spent_usd"]
    if spent >= float(budget):
        raise ConfigError(f"pod.max_cost_usd is ${float(budget):.2f} and this project's pods have cost ${spent:.2f}",
                          hint="'wf cost' lists them; raise pod.max_cost_usd to go on")


def settings(config, *, provider: str, pod_id: str, created_at: Optional[float], now: Optional[float] = None) -> Dict[str, Any]:
    """The watchdog's request (may hold the account key: never log or print it)."""
    from workflow.providers.lifecycle import parse_ttl

    now = time.time() if now is None else now
    idle = config.get("autostop.idle_minutes", None)
    ttl = parse_ttl(config.pod.ttl) if config.pod.ttl not in (None, "") else None
    doc: Dict[str, Any] = {
        "provider": provider, "pod_id": str(pod_id), "pod_name": spend.pod_name(config), "project": config.project,
        "action": config.get("autostop.action", "stop"), "command": config.get("autostop.command", None),
        "gpu_util_below": float(config.get("autostop.gpu_util_below", 5)),
        "idle_secs": float(idle) * 60.0 if idle else None,
        "ttl_at": (created_at or now) + ttl if ttl else None,
        "api_base": _base_url(provider),
        "notify_urls": notify_urls(config), "notify_on": list(config.get("notify.on", []) or []),
        "notify_pythons": [f"{config.remote.workdir}/.venv/bin/python"] if config.remote.workdir else [],
    }
    budget = config.get("pod.max_cost_usd", None)
    if budget:
        doc["budget"] = dict(pool_spend(config, now), max_usd=float(budget))
    if config.get("autostop.allow_account_key", False) and provider in spend.API_KEYS:
        doc["account_key"] = config.secret(spend.API_KEYS[provider])
    from workflow import session as sessions

    held = sessions.load(config)
    if provider == "vastai" and held is not None and held.cluster:
        doc["overlay"] = held.cluster  # its last member's watchdog deletes it (with the account key)
    return doc


def marker_path(config):
    """``.podflow/watchdog-<pod>.json``: a watchdog was started on this pod (so that
    turning autostop off ends it, at no cost to projects that never used one)."""
    from pathlib import Path

    return Path(config.root) / ".podflow" / f"watchdog-{spend.pod_name(config)}.json"


def launch(config, agent, *, provider: str, pod_id: str, created_at: Optional[float]) -> Optional[Dict[str, Any]]:
    """(Re)start the pod's watchdog, or end the one started before when nothing asks for one."""
    import json

    marker = marker_path(config)
    if not configured(config):
        if marker.exists():
            agent.call("autostop.stop")
            marker.unlink()
        return None
    check(config)
    doc = settings(config, provider=provider, pod_id=pod_id, created_at=created_at)
    started = agent.call("autostop.start", **doc)
    marker.parent.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in doc.items() if k not in SECRET_KEYS}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(public, pid=started.get("pid"), at=time.time()), indent=2) + "\n")
    os.replace(tmp, marker)
    return started


def launch_current(config, agent) -> Optional[Dict[str, Any]]:
    """``launch`` for this config's pod as the session and the ledger know it (``bootstrap``)."""
    key = spend.current_key(config)
    if key is None:
        return None
    known = ledger.pod(config, key)
    return launch(config, agent, provider=key.provider, pod_id=key.id,
                  created_at=known.running_since if known else None)


def describe(agent, now: Optional[float] = None) -> Dict[str, Any]:
    """``pod-status``'s ``autostop``: whether the watchdog runs, when it will act, why not yet."""
    now = time.time() if now is None else now
    doc = agent.call("autostop.status")
    st = doc.get("state") or {}
    acts_at = st.get("acts_at")
    return {"running": doc.get("running"), "action": st.get("action"), "acts_at": acts_at,
            "acts_in_secs": round(acts_at - now, 1) if acts_at else None, "not_yet": st.get("not_yet"),
            "busy": st.get("busy"), "idle_since": st.get("idle_since"), "ttl_at": st.get("ttl_at"),
            "spent_usd": st.get("spent_usd"), "max_cost_usd": st.get("max_cost_usd"),
            "decision": doc.get("decision")}
