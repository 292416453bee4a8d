"""``.podflow/ledger.jsonl``: every pod this project has had, as an append-only event log.

One JSON line per event, never rewritten: ``rent`` (podflow rented it), ``adopt``
(podflow started using a pod it did not rent: ``pod.target``, an ssh host, this
machine), ``start``, ``stop``, ``destroy`` (by podflow) and ``gone`` (the provider no
longer has it, or says it is terminated: destroyed outside podflow, e.g. by the
watchdog on the pod). Each line carries the time, the provider, the pod's id, its name
in the pool (``p0``...), its provider label and the price per hour known then.

Spend is folded from the events: the sum of the intervals a pod was running times its
price (a stopped pod's disk is not counted). A line is written with one ``write`` on an
``O_APPEND`` descriptor under a lock, so concurrent writers never interleave or
duplicate a transition, and a torn last line (a crash mid-write) is skipped by readers.
No secret ever goes in.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from workflow.agent.fsutil import locked

LEDGER_FILE = Path(".podflow") / "ledger.jsonl"

#: event -> the pod's state after it
STATE_AFTER = {"rent": "running", "adopt": "running", "start": "running", "stop": "stopped",
               "destroy": "destroyed", "gone": "gone"}
OPENING = ("rent", "adopt", "start")
CLOSED_STATES = ("destroyed", "gone")


def path_for(config=None, root: Optional[os.PathLike] = None) -> Path:
    base = Path(root) if root is not None else (Path(config.root) if config is not None else Path.cwd())
    return base / LEDGER_FILE


@dataclass(frozen=True)
class PodKey:
    """Which pod a ledger line is about."""

    provider: str
    id: str
    name: str = "p0"
    """The pod's name in the pool (``p0``, ``p1``...)."""


@dataclass(frozen=True)
class PodSpend:
    """One pod as the ledger tells it, with its spend up to ``at``."""

    key: PodKey
    state: str
    """``running``, ``stopped``, ``destroyed`` (by podflow) or ``gone`` (noticed gone)."""
    label: Optional[str]
    """The provider's name for it (e.g. ``myproj-3fa2c1``)."""
    price_per_hour: Optional[float]
    """The last price known (USD/h); None when nobody said."""
    spent_usd: Optional[float]
    """Running time times price; None when the price was never known."""
    running_since: Optional[float]
    """Epoch when the current running interval began (None unless running)."""
    first_at: float
    last_at: float
    """Epoch of its first and last event."""

    @property
    def alive(self) -> bool:
        return self.state not in CLOSED_STATES

    def as_dict(self) -> Dict[str, Any]:
        """An entry of ``wf cost --json``."""
        return {"name": self.key.name, "provider": self.key.provider, "id": self.key.id, "label": self.label,
                "state": self.state, "price_per_hour": self.price_per_hour,
                "spent_usd": None if self.spent_usd is None else round(self.spent_usd, 6),
                "first_at": self.first_at, "last_at": self.last_at}


def _read(p: Path) -> List[Dict[str, Any]]:
    try:
        text = p.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a torn line from a crash mid-write
        if isinstance(doc, dict) and doc.get("event") in STATE_AFTER and doc.get("provider") and doc.get("id"):
            out.append(doc)
    return out


def entries(config=None, *, root: Optional[os.PathLike] = None) -> List[Dict[str, Any]]:
    """Every readable line of the ledger, in order."""
    return _read(path_for(config, root))


def _key(doc: Dict[str, Any]) -> PodKey:
    return PodKey(str(doc["provider"]), str(doc["id"]), str(doc.get("pod") or "p0"))


def fold(docs: List[Dict[str, Any]], now: Optional[float] = None,
         live_prices: Optional[Dict[PodKey, float]] = None) -> List[PodSpend]:
    """Each pod's state and spend up to ``now``, in order of first appearance. A running
    pod's open interval is priced at ``live_prices[key]`` when given (the provider's
    price now), else at its last recorded price."""
    now = time.time() if now is None else now
    acc: Dict[PodKey, Dict[str, Any]] = {}
    for doc in docs:
        key = _key(doc)
        at = float(doc.get("at") or 0.0)
        a = acc.setdefault(key, {"state": None, "label": None, "price": None, "spent": 0.0, "priced": False,
                                 "since": None, "first": at, "last": at})
        price = doc.get("price_per_hour")
        if a["since"] is not None and doc["event"] not in OPENING:
            if a["price"] is not None:
                a["spent"] += max(0.0, at - a["since"]) * a["price"] / 3600.0
            a["since"] = None
        if isinstance(price, (int, float)) and not isinstance(price, bool):
            a["price"], a["priced"] = float(price), True
        if doc["event"] in OPENING and a["since"] is None:
            a["since"] = at
        a["state"] = STATE_AFTER[doc["event"]]
        a["label"] = doc.get("label") or a["label"]
        a["last"] = at
    out = []
    for key, a in acc.items():
        price = (live_prices or {}).get(key, a["price"])
        spent = a["spent"]
        if a["since"] is not None and price is not None:
            spent += max(0.0, now - a["since"]) * price / 3600.0
        priced = a["priced"] or price is not None
        out.append(PodSpend(key=key, state=a["state"], label=a["label"], price_per_hour=price,
                            spent_usd=spent if priced else None, running_since=a["since"],
                            first_at=a["first"], last_at=a["last"]))
    return out


def pod(config, key: PodKey) -> Optional[PodSpend]:
    """What the ledger says of one pod, or None when it never saw it."""
    for ps in fold(entries(config)):
        if ps.key == key:
            return ps
    return None


def record(config, event: str, key: PodKey, *, price_per_hour: Optional[float] = None,
           label: Optional[str] = None, at: Optional[float] = None, reason: Optional[str] = None,
           root: Optional[os.PathLike] = None) -> bool:
    """Append ``event`` for ``key`` unless it changes nothing (a ``start`` of a running
    pod, a second ``adopt``, anything after it was destroyed but a new ``rent``/``adopt``).
    Returns whether a line was written."""
    if event not in STATE_AFTER:
        raise ValueError(f"unknown ledger event {event!r}")
    p = path_for(config, root)
    with locked(str(p) + ".lock"):
        now_state = next((ps.state for ps in fold(_read(p)) if ps.key == key), None)
        if not _changes(now_state, event):
            return False
        doc: Dict[str, Any] = {"at": round(time.time() if at is None else float(at), 3), "event": event,
                               "provider": key.provider, "id": key.id, "pod": key.name}
        if label:
            doc["label"] = label
        if price_per_hour is not None:
            doc["price_per_hour"] = float(price_per_hour)
        if reason:
            doc["reason"] = reason
        line = (json.dumps(doc, sort_keys=True) + "\n").encode()
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def _changes(state: Optional[str], event: str) -> bool:
    if state is None or state in CLOSED_STATES:
        return event in ("rent", "adopt")
    if event in ("rent", "adopt"):
        return False
    return STATE_AFTER[event] != state


def open_pods(config) -> List[PodSpend]:
    """Pods the ledger believes still exist (running or stopped)."""
    return [ps for ps in fold(entries(config)) if ps.alive]


def totals(spends: List[PodSpend]) -> Tuple[float, bool]:
    """(total USD, whether every pod's price was known)."""
    known = [s.spent_usd for s in spends if s.spent_usd is not None]
    return round(sum(known), 6), len(known) == len(spends)
