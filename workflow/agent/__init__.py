"""The pod-side helper ("podagent"): stdlib only, Python >= 3.8.

Shipped to the pod as a zipapp (``_control/agent/podagent-<hash>.pyz``, versioned by
content hash) and run as ``python3 podagent.pyz OP`` with a JSON request on stdin. It
answers one JSON document between markers (``protocol.py``), so every engine command
costs one remote exec whatever the number of tasks or runs. ``serve`` keeps one agent
running on an SSH channel for many ops (``serve.py``). It also runs long work: the
tracked-task wrapper and the sweep runner.

Rules for modules in this package: stdlib only, relative imports only, no f-string
``=`` specifiers or other 3.9+ syntax, no third-party imports.
"""
