"""money tasks: what this project's pods have cost (SPEC §10)."""

from __future__ import annotations

from workflow import runtime
from workflow.cli.boundary import print_json, wf_task


def _usd(v) -> str:
    return "?" if v is None else f"${v:.3f}"


@wf_task(help={"json": 'print one JSON document: {"pods": [{"name", "provider", "id", "state", '
                       '"price_per_hour", "spent_usd", ...}], "total_usd"}'})
def cost(c, json=False):
    """Every pod this project has had, alive or gone, with its spend and the total.

    Read from .podflow/ledger.jsonl (a line per rent, adopt, start, stop, destroy). Pods
    the ledger thinks alive are checked with their provider first (when its API key is
    set): one destroyed outside podflow is closed as 'gone'. Spend is running time times
    price; a stopped pod's disk is not counted.
    """
    from workflow.money.spend import cost_report

    doc = cost_report(runtime.config())
    if json:
        print_json(doc)
        return
    if not doc["pods"]:
        print("no pods recorded yet (the ledger starts with 'wf pod-up')")
        return
    print(f"{'pod':<4} {'provider':<8} {'id':<24} {'state':<10} {'$/h':>8} {'spent':>10}")
    for p in doc["pods"]:
        price = "?" if p["price_per_hour"] is None else f"{p['price_per_hour']:.3f}"
        print(f"{p['name']:<4} {p['provider']:<8} {str(p['id'])[:24]:<24} {p['state']:<10} {price:>8} "
              f"{_usd(p['spent_usd']):>10}")
    print(f"total: {_usd(doc['total_usd'])}" + ("" if doc["complete"] else " (some pods have no known price)"))
    if doc["unchecked_providers"]:
        print("not checked with the provider (no API key set): " + ", ".join(doc["unchecked_providers"]))
