"""Turn an env string into the type the schema wants (env values are all strings).

``RUN_TIMEOUT_SECS=3600`` must become 3600, ``WF_FSM_ENFORCE=0`` false, and
``WF__POD__OFFER__REGIONS=[US, EU]`` a list; the type comes from the schema so there is
one list of types. A value that fits no allowed type raises ``ValueError`` with words
for what was expected; the loader adds the variable's name.
"""

from __future__ import annotations

import re
from typing import Any, List

from workflow.config.schema import Schema, describe_type, types_of

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
NULL = {"", "null", "none", "~"}
_INT = re.compile(r"[+-]?\d+")


def _structured(text: str, want: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # falls through to "expected <type> ..., got '<text>'"


def coerce(text: str, node: Schema) -> Any:
    """The typed value of ``text`` for a key with schema ``node``."""
    types: List[str] = types_of(node) or ["string"]
    low = text.strip().lower()
    for choice in node.get("enum", ()):  # e.g. checkout.require_cuda: auto, true or false
        if isinstance(choice, bool) and low in (TRUE if choice else FALSE):
            return choice
        if isinstance(choice, str) and text.strip() == choice:
            return choice
    if "null" in types and low in NULL:
        return None
    if "string" in types:
        return text  # a string is what env holds: never guess "7" (a pod name) is a number
    for t in types:
        if t == "boolean":
            if low in TRUE:
                return True
            if low in FALSE:
                return False
        elif t == "integer":
            if _INT.fullmatch(text.strip()):
                return int(text.strip())
        elif t == "number":
            if _INT.fullmatch(text.strip()):
                return int(text.strip())
            try:
                value = float(text.strip())
            except ValueError:
                continue
            if value == value and value not in (float("inf"), float("-inf")):
                return value
        elif t == "array":
            if text.strip().startswith("["):
                value = _structured(text, "a list")
                if isinstance(value, list):
                    return value
        elif t == "object":
            if text.strip().startswith("{"):
                value = _structured(text, "a mapping")
                if isinstance(value, dict):
                    return value
    hint = ""
    if "array" in types:
        hint = " (write a list as JSON or YAML flow: [a, b])"
    elif "object" in types:
        hint = " (write a mapping as JSON or YAML flow: {A: b})"
    elif "boolean" in types:
        hint = " (1/0, true/false, yes/no)"
    raise ValueError(f"expected {describe_type(node)}{hint}, got {text!r}")
