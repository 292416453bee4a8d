"""Fake provider APIs (local HTTP servers in the documented shapes) whose pods are real loopback sshds."""
