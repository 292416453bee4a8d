"""The shipped JSON Schema (``schema.json``) and the few questions the loader asks of it.

The schema says what each key may hold; ``defaults.py`` says what it holds when nobody
set it. Walking the schema here (instead of hard-coding key lists) keeps env coercion,
did-you-mean, secret refusal and the README reference in step with one file.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

SCHEMA_PATH = Path(__file__).with_name("schema.json")

Schema = Mapping[str, Any]


@lru_cache(maxsize=1)
def schema() -> Schema:
    """The schema as shipped in the package (read once per process)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def validator():
    """A jsonschema validator for the whole config (imported lazily: cold start)."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema())
    return cls(schema())


def types_of(node: Schema) -> List[str]:
    t = node.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def is_section(node: Schema) -> bool:
    """An object with named keys (``pod``, ``pod.offer``): recursed into, merged key by key."""
    return "object" in types_of(node) and "properties" in node


def is_free_mapping(node: Schema) -> bool:
    """An object whose keys are the user's (``remote.env``)."""
    return "object" in types_of(node) and "properties" not in node


def is_secret(node: Schema) -> bool:
    return bool(node.get("x-secret"))


def child(node: Schema, key: str) -> Optional[Schema]:
    """The schema of ``key`` inside ``node`` (None when the key is unknown)."""
    if is_section(node):
        return node["properties"].get(key)
    if is_free_mapping(node):
        extra = node.get("additionalProperties", True)
        return extra if isinstance(extra, Mapping) else ({} if extra else None)
    return None


def at(dotted: str) -> Optional[Schema]:
    """The schema of a dotted key, or None when there is no such key."""
    node: Optional[Schema] = schema()
    for part in dotted.split("."):
        node = child(node, part) if node is not None else None
    return node


def leaves(node: Optional[Schema] = None, prefix: str = "") -> Iterator[Tuple[str, Schema]]:
    """Every settable key (dotted) with its schema, in schema order; sections are not
    leaves, lists and free mappings are. Secret keys are included (see ``is_secret``)."""
    node = schema() if node is None else node
    for key, sub in node.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        if is_section(sub):
            yield from leaves(sub, dotted + ".")
        else:
            yield dotted, sub


def all_keys() -> List[str]:
    """Every dotted key, sections included (for did-you-mean across sections)."""
    out: List[str] = []

    def walk(node: Schema, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            out.append(prefix + key)
            if is_section(sub):
                walk(sub, prefix + key + ".")

    walk(schema(), "")
    return out


def secret_env_names() -> Dict[str, str]:
    """Env var name -> the schema key it stands for, for every key marked ``x-secret``."""
    names: Dict[str, str] = {}
    for dotted, sub in leaves():
        if is_secret(sub):
            for name in sub.get("x-env", []):
                names[name] = dotted
    return names


def describe_type(node: Schema) -> str:
    """Words for what a key holds: 'an integer >= 1', 'one of: a, b', 'a list of strings'."""
    if "enum" in node:
        words = ", ".join(repr(v) if isinstance(v, str) else json.dumps(v) for v in node["enum"])
        return f"one of {words}"
    parts = []
    types = types_of(node)
    for t in types:
        if t == "array":
            item = node.get("items", {})
            parts.append("a list of " + ("strings" if types_of(item) == ["string"] else "{" + ", ".join(item.get("properties", {})) + "} mappings"))
        elif t == "object":
            parts.append("a mapping" + (" of strings" if types_of(node.get("additionalProperties") or {}) == ["string"] else ""))
        elif t != "null":
            parts.append({"string": "a string", "integer": "an integer", "number": "a number",
                          "boolean": "true or false"}.get(t, t))
    bounds = []
    if "minimum" in node:
        bounds.append(f">= {node['minimum']}")
    if "exclusiveMinimum" in node:
        bounds.append(f"> {node['exclusiveMinimum']}")
    if "maximum" in node:
        bounds.append(f"<= {node['maximum']}")
    text = " or ".join(parts) + (" " + " and ".join(bounds) if bounds else "")
    return text + (" or null" if "null" in types else "") if parts else "null"


def path_text(path: Sequence[Any]) -> str:
    """``('data', 'checks', 0, 'path')`` -> ``data.checks[0].path``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
