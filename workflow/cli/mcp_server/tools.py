"""Which commands are MCP tools, what an agent is told about each, and how a call runs.

A call runs the command's own Invoke task in this process with ``json=True`` and takes
the document its ``--json`` would print (``boundary.capture_json``): the same code, the
same document, the same exit code. Exit 0 is a result; any other exit is a tool error
whose document is the one ``--json`` prints on failure, ``{"error": {"type", "message",
"hint"}, "exit_code"}`` (plus ``"document"`` when the command printed its own first, as
``sweep-wait`` does when a run failed). Every string that goes out is scrubbed of the
values of secret environment variables.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from workflow.errors import ExitCode
from workflow.cli.mcp_server.schema import input_schema

log = logging.getLogger("podflow.mcp")

#: The longest a ``sweep_wait`` call may block (client request timeouts are finite).
MAX_WAIT_SECS = 600

_RETURNS = "Returns the JSON document of `wf {command} --json`."
_MEANING = {1: "the remote work failed (a task or run did not succeed)", 2: "bad input", 3: "refused by the state machine",
            4: "the pod or the provider cannot be reached", 5: "a wait timed out", 130: "interrupted"}


@dataclass(frozen=True)
class ToolSpec:
    """One tool: the command it runs and what an agent needs to know to call it well."""

    name: str
    """The tool's name; the command is the same with dashes (``sweep_status`` -> ``sweep-status``)."""
    needs: str
    """The state or setup the call needs (SPEC §4), in a few words."""
    takes: str
    """How long a call may take."""
    hidden: Tuple[str, ...] = ()
    """Flags that make no sense for a tool (``--watch``, ``--follow``); ``json`` always is."""
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Schema keywords the tool adds to an argument (a bound, a default)."""
    confirm: Optional[str] = None
    """For tools that destroy or rewrite: what ``confirm: true`` acknowledges."""
    read_only: bool = True
    on_timeout: Optional[str] = None
    """A wait that ran out of time (exit 5) returns this tool's document instead of an error."""

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


TOOLS: Tuple[ToolSpec, ...] = (
    ToolSpec("config_show", "a project directory; no pod", "instant"),
    ToolSpec("sweep_validate", "the sweep CSV on this machine; no pod", "instant"),
    ToolSpec("pod_status", "any state (asks the provider, then the pod)", "seconds"),
    ToolSpec("fsm_status", "any state; the pod reachable", "about a second"),
    ToolSpec("sweep_start", "state CHECKED_OUT or SWEEP_COMPLETED (after pod-up, bootstrap, checkout), or "
             "SWEEP_RUNNING whose runner died", "seconds: returns once the runner is started; follow with "
             "sweep_status or sweep_wait", read_only=False),
    ToolSpec("sweep_status", "any state; the pod reachable", "about a second (one round trip whatever the "
             "number of runs)", hidden=("watch", "interval")),
    ToolSpec("sweep_wait", "a sweep started (sweep_start)", f"up to timeout_secs (at most {MAX_WAIT_SECS}); "
             "returns at once when the sweep ends; on time-out returns the sweep_status document (not an "
             "error) and the sweep goes on: call it again",
             overrides={"timeout_secs": {"default": 30, "maximum": MAX_WAIT_SECS, "exclusiveMinimum": 0,
                                         "description": "wait at most N seconds (default 30, at most 600; keep "
                                         "it under your client's request timeout, often 60 s); then return the "
                                         "status document, the sweep going on"}},
             on_timeout="sweep_status"),
    ToolSpec("fetch_run", "any state; the run on the pod", "seconds to minutes (rsync of the run's dir)",
             read_only=False),
    ToolSpec("fetch_all", "any state", "seconds to minutes (one rsync of every run dir)", read_only=False),
    ToolSpec("task_run", "any state; the pod reachable", "seconds: returns once the task runs; follow "
             "with task_status or task_logs", read_only=False),
    ToolSpec("task_status", "a task started with task_run", "about a second"),
    ToolSpec("task_list", "any state", "about a second"),
    ToolSpec("task_logs", "a task started with task_run", "about a second", hidden=("follow",),
             overrides={"tail": {"default": 200, "minimum": 1}}),  # an agent's context is not a terminal
    ToolSpec("task_kill", "a task started with task_run", "seconds (TERM, then KILL after a grace period)",
             read_only=False),
    ToolSpec("cost", "the local ledger; no pod", "instant"),
    ToolSpec("sweep_stop", "state SWEEP_RUNNING", "seconds (each active run gets TERM, then KILL after "
             "grace_secs)", read_only=False, confirm="cancels every active run of the sweep"),
    ToolSpec("pod_down", "any state", "seconds to a minute (the provider's API)", read_only=False,
             confirm="stops the pod, or with destroy: true destroys it and its disk for good"),
    ToolSpec("fsm_reset", "any state", "about a second", read_only=False,
             confirm="overrides the workflow state by hand (the state machine's checks are bypassed)"),
)


def available() -> List[ToolSpec]:
    """The tools whose command exists in the collection."""
    from workflow.cli import ns

    return [spec for spec in TOOLS if spec.command in ns.task_names]


def spec_named(name: str) -> ToolSpec:
    return next(s for s in TOOLS if s.name == name)


def _task(spec: ToolSpec):
    from workflow.cli import ns

    return ns[spec.command]


def schema_of(spec: ToolSpec) -> Dict[str, Any]:
    schema = input_schema(_task(spec), hidden=("json", *spec.hidden), overrides=spec.overrides)
    if spec.confirm:
        schema["properties"]["confirm"] = {
            "type": "boolean", "default": False,
            "description": f"must be true: this {spec.confirm}; without it the call is refused (exit 2)"}
    return schema


def description_of(spec: ToolSpec) -> str:
    doc = inspect.getdoc(inspect.unwrap(_task(spec).body)) or spec.name
    lines = [doc, "", f"Needs: {spec.needs}.", f"Takes: {spec.takes}.", _RETURNS.format(command=spec.command)]
    if spec.confirm:
        lines.append(f"Refused unless confirm is true: it {spec.confirm}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- calling


@dataclass(frozen=True)
class Outcome:
    """A finished call: the document and the command's exit code (0: a result)."""

    doc: Dict[str, Any]
    exit_code: int
    note: Optional[str] = None

    @property
    def is_error(self) -> bool:
        return self.exit_code != 0


def failure(exit_code: int, kind: str, message: str, hint: Optional[str] = None) -> Outcome:
    return Outcome({"error": {"type": kind, "message": message, "hint": hint}, "exit_code": int(exit_code)},
                   int(exit_code))


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    """A tool's compiled schema: built once per server (the tasks do not change under it)."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema_of(spec_named(name)))


def _check_arguments(spec: ToolSpec, arguments: Dict[str, Any]) -> Optional[Outcome]:
    validator = _validator(spec.name)
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
    if not errors:
        return None
    text = "; ".join((f"{'.'.join(map(str, e.path))}: " if e.path else "") + e.message for e in errors)
    return failure(ExitCode.BAD_INPUT, "InputError", f"{spec.name}: bad arguments: {text}",
                   hint=f"see the tool's input schema (the flags of wf {spec.command} --help)")


def call(spec: ToolSpec, arguments: Optional[Mapping[str, Any]]) -> Outcome:
    """Run the tool's command in this process; never raises for a user-facing failure."""
    args = dict(arguments or {})
    if spec.confirm and args.get("confirm") is not True:
        return failure(ExitCode.BAD_INPUT, "ConfirmationRequired",
                       f"{spec.name} {spec.confirm}; refused without confirm: true",
                       hint=f"call {spec.name} again with confirm: true if that is what you want")
    bad = _check_arguments(spec, args)
    if bad is not None:
        return bad
    args.pop("confirm", None)
    for name, prop in _validator(spec.name).schema["properties"].items():
        if name in spec.overrides and name not in args and "default" in prop:
            args[name] = prop["default"]  # a default the tool needs and the CLI has not (a bound wait)
    outcome = _run_task(spec, args)
    if outcome.exit_code == ExitCode.WAIT_TIMEOUT and spec.on_timeout:
        then = _run_task(spec_named(spec.on_timeout), {})
        if not then.is_error:
            return Outcome(then.doc, 0, note=f"{spec.name}: {outcome.doc['error']['message']}")
        return then
    return outcome


def _run_task(spec: ToolSpec, args: Dict[str, Any]) -> Outcome:
    from invoke import Context
    from invoke.exceptions import Exit

    from workflow.cli.boundary import capture_json

    code = 0
    message = None
    with capture_json() as docs:
        try:
            _task(spec).body(Context(), **args, json=True)
        except Exit as exc:
            code, message = int(exc.code), exc.message
        except Exception as exc:  # a bug, not a user error: report it, keep serving
            log.exception("%s failed unexpectedly", spec.name)
            return failure(ExitCode.REMOTE_FAILED, type(exc).__name__, f"{spec.name} failed unexpectedly: {exc}",
                           hint="this is a podflow bug; the server's stderr has the traceback")
    doc = docs[-1] if docs else {}
    if code == 0:
        return Outcome(doc if isinstance(doc, dict) else {"result": doc}, 0)
    if isinstance(doc, dict) and "error" in doc and "exit_code" in doc:
        return Outcome(doc, code)  # the failure document --json printed
    text = (message or "").removeprefix("error: ") or f"wf {spec.command} exited {code}: {_MEANING.get(code, 'failed')}"
    failed = failure(code, "CommandFailed", text, hint="'document' holds what the command reported" if docs else None)
    if docs:
        failed.doc["document"] = doc
    return failed


# ---------------------------------------------------------------- secrets


def secret_values(env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Values of the secret variables in the environment (SPEC §2), longest first."""
    from workflow.config.loader import looks_secret, secret_names

    env = os.environ if env is None else env
    names = set(secret_names()) | {k for k in env if looks_secret(k)}
    values = {env[k] for k in names if len(env.get(k) or "") >= 4}
    return sorted(values, key=len, reverse=True)


def redact(value: Any, secrets: List[str]) -> Any:
    """``value`` with every secret replaced by ``****`` (strings inside lists and dicts too)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, "****")
        return value
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    return value
