"""The sweep runner on the pod (filled by the sweeps issue)."""

OPS = {}
COMMANDS = {}
