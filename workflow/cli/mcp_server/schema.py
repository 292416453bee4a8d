"""A tool's input JSON Schema from the Invoke task behind the command.

One declaration, two faces: ``wf task-run --help`` and the ``task_run`` tool both come
from ``task_run``'s signature and its ``help={...}``. Invoke gives each argument's name,
default, help and kind (bool, int, list, str); a type annotation on the parameter says
more where the CLI takes text but means a number (``timeout_secs: Optional[float]``:
the task parses the text, the tool takes a number). Arguments without a default are
required, as they are positional on the command line.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional

from workflow.cli.boundary import task_arguments

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def python_name(argument) -> str:
    """The task parameter behind an Invoke ``Argument`` (``timeout-secs`` -> ``timeout_secs``)."""
    return argument.attr_name or argument.name


def _hints(task) -> Dict[str, Any]:
    fn = inspect.unwrap(task.body)
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: fall back to Invoke's kinds
        return {}


def _json_type(annotation: Any, kind: Any) -> Dict[str, Any]:
    if annotation is not None:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is typing.Union and len(args) == 1:
            annotation = args[0]
        if annotation in _JSON_TYPES:
            return {"type": _JSON_TYPES[annotation]}
        if typing.get_origin(annotation) in (list, List):
            return {"type": "array", "items": {"type": "string"}}
    if kind is list:
        return {"type": "array", "items": {"type": "string"}}
    return {"type": _JSON_TYPES.get(kind, "string")}


def input_schema(task, *, hidden: Iterable[str] = (),
                 overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """The JSON Schema (an object) of ``task``'s arguments, less ``hidden`` ones.
    ``overrides`` adds or replaces schema keywords per argument (a tighter ``maximum``,
    a default the tool needs, a description for the tool's own behaviour)."""
    hidden = set(hidden)
    hints = _hints(task)
    props: Dict[str, Any] = {}
    required: List[str] = []
    for arg in task_arguments(task):
        name = python_name(arg)
        if name in hidden:
            continue
        prop = _json_type(hints.get(name), arg.kind)
        if arg.help:
            prop["description"] = arg.help
        if arg.default not in (None, [], ()):
            prop["default"] = arg.default
        prop.update((overrides or {}).get(name, {}))
        props[name] = prop
        if arg.positional and "default" not in prop:
            required.append(name)
    schema: Dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema
