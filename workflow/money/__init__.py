"""Money (SPEC §10): what pods cost, what this project has spent, and when to stop paying.

- ``ledger``: ``.podflow/ledger.jsonl``, one line per rent/adopt/start/stop/destroy/gone
  with its price and time; spend is folded from it.
- ``spend``: the figures ``pod-status``, ``sweep-status`` and ``wf cost`` print, and the
  reconciliation that closes a pod the provider no longer has.
"""
