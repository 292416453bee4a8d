"""``wf mcp``: podflow's commands as Model Context Protocol tools (SPEC §12).

- ``schema``: a tool's JSON Schema, derived from the Invoke task behind the CLI command
  (its signature and ``help``), so the flags are declared once.
- ``tools``: which commands are tools, what an agent is told about each, and how a call
  runs the task's ``--json`` path in-process (the same document, the same errors).
- ``server``: the official ``mcp`` SDK on stdio; one tool at a time, in a worker thread,
  over the connection to the pod that the server keeps between calls.

Only ``server`` imports the SDK (the ``podflow[mcp]`` extra).
"""
