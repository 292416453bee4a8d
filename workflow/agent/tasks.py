"""Tracked tasks on the pod (filled by the tracked-tasks issue)."""

OPS = {}
COMMANDS = {}
