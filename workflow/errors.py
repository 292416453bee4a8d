"""Typed errors and the exit codes of SPEC §3.

Library code raises these; only the CLI boundary (``workflow.cli.boundary``) turns them
into a message on stderr and an exit code. Messages are for users: say what is wrong
and what to do, never include a secret.
"""

from __future__ import annotations

import enum
from typing import Optional, Sequence


class ExitCode(enum.IntEnum):
    OK = 0
    REMOTE_FAILED = 1  # a task or run failed, a check failed
    BAD_INPUT = 2  # config, CSV, flags
    REFUSED = 3  # refused by the state machine
    UNREACHABLE = 4  # cannot reach the pod or the provider
    WAIT_TIMEOUT = 5  # a wait timed out
    INTERRUPTED = 130


class PodflowError(Exception):
    """Base of every error a user may see. ``exit_code`` says how the CLI exits."""

    exit_code: ExitCode = ExitCode.REMOTE_FAILED

    def __init__(self, message: str, *, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(PodflowError):
    """Bad config file, env file, override or flag value."""

    exit_code = ExitCode.BAD_INPUT


class InputError(PodflowError):
    """Bad user input that is not the config: a CSV, an id, a path, a flag."""

    exit_code = ExitCode.BAD_INPUT


class TransitionRefused(PodflowError):
    """The state machine refuses a command in the current state."""

    exit_code = ExitCode.REFUSED

    def __init__(self, command: str, current: str, allowed: Sequence[str]):
        self.command, self.current, self.allowed = command, current, list(allowed)
        super().__init__(
            f"'{command}' is not allowed in state {current}; allowed from: {', '.join(allowed)}",
            hint="run 'wf fsm-status' to see the history, or 'wf fsm-reset STATE --reason TEXT' "
            "to override (WF_FSM_ENFORCE=0 turns refusal into a warning)",
        )


class ConnectionFailed(PodflowError):
    """The pod (or its SSH endpoint) cannot be reached or authenticated."""

    exit_code = ExitCode.UNREACHABLE


class HostKeyMismatch(ConnectionFailed):
    """The host presented a key different from the one pinned on first use."""


class ProviderError(PodflowError):
    """A provider API failed or refused; ``provider`` names it."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, provider: str, message: str, *, hint: Optional[str] = None):
        self.provider = provider
        super().__init__(f"{provider}: {message}", hint=hint)


class UnsupportedAction(PodflowError):
    """A provider lacks an action (e.g. Lium cannot stop a pod)."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, provider: str, action: str, *, hint: Optional[str] = None):
        self.provider, self.action = provider, action
        super().__init__(f"provider '{provider}' does not support '{action}'", hint=hint)


class RemoteCommandFailed(PodflowError):
    """A command on the pod exited non-zero; carries the command, code and output tail."""

    exit_code = ExitCode.REMOTE_FAILED

    def __init__(self, command: str, code: int, output_tail: str = "", *, hint: Optional[str] = None):
        self.command, self.code, self.output_tail = command, code, output_tail
        text = f"remote command failed with exit {code}: {command}"
        if output_tail.strip():
            text += "\n--- last output ---\n" + output_tail.rstrip()
        super().__init__(text, hint=hint)


class RemoteProtocolError(PodflowError):
    """The pod answered something the engine cannot parse (corrupt file, noise, truncation)."""

    exit_code = ExitCode.UNREACHABLE


class CorruptRemoteFile(PodflowError):
    """A status or state file on the pod is unparsable; it is reported, never replaced."""

    exit_code = ExitCode.REMOTE_FAILED


class WaitTimeout(PodflowError):
    """A wait (task-wait, sweep-wait) ran out of time; the remote work goes on."""

    exit_code = ExitCode.WAIT_TIMEOUT


class CheckFailed(PodflowError):
    """A check on the pod failed (prerequisite, preflight, data check, checksum)."""

    exit_code = ExitCode.REMOTE_FAILED
