"""``KEY=VALUE`` env files (``configs/workflow.env``), parsed, never run by a shell.

A shell would expand ``$(...)`` and ``$VAR``; a config file must not run anything, so
values are taken literally. Tolerated, as in the seed's ``workflow.env`` and dotenv
files: comments, blank lines, an ``export`` prefix, spaces around ``=``, single quotes
(fully literal), double quotes (``\\"``, ``\\\\`` and ``\\n`` escapes), and an
unquoted value's trailing `` # comment``. A line that fits none of this is a problem
naming file and line; its text is not echoed, since it may hold a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE = re.compile(r"^(?:export\s+)?(?P<name>[^=\s]+)\s*=\s*(?P<value>.*)$")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "$": "$", "`": "`"}


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    line: int


@dataclass(frozen=True)
class EnvLineError:
    line: int
    message: str


def _unquote(raw: str) -> str:
    """The value of one line's right-hand side; raises ValueError with the reason."""
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0:
            raise ValueError("unterminated single quote (values span one line)")
        rest = raw[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ValueError("text after the closing quote")
        return raw[1:end]
    if raw.startswith('"'):
        out, i = [], 1
        while i < len(raw):
            ch = raw[i]
            if ch == "\\" and i + 1 < len(raw):
                nxt = raw[i + 1]
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
                continue
            if ch == '"':
                rest = raw[i + 1 :].strip()
                if rest and not rest.startswith("#"):
                    raise ValueError("text after the closing quote")
                return "".join(out)
            out.append(ch)
            i += 1
        raise ValueError("unterminated double quote (values span one line)")
    # Unquoted: an inline comment starts at whitespace + '#'.
    value = re.split(r"\s+#", raw, maxsplit=1)[0]
    return value.strip()


def parse_env_text(text: str) -> Tuple[List[EnvEntry], List[EnvLineError]]:
    """Entries in file order (a later duplicate wins when applied) and bad lines."""
    entries: List[EnvEntry] = []
    errors: List[EnvLineError] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(stripped)
        if not m:
            errors.append(EnvLineError(number, "expected KEY=VALUE (a name, '=', a value)"))
            continue
        name = m.group("name")
        if not NAME.fullmatch(name):
            errors.append(EnvLineError(number, f"'{name[:40]}' is not a variable name (letters, digits, _)"))
            continue
        try:
            value = _unquote(m.group("value"))
        except ValueError as exc:
            errors.append(EnvLineError(number, f"{name}: {exc}"))
            continue
        entries.append(EnvEntry(name, value, number))
    return entries, errors


def parse_env_file(path: Path) -> Tuple[List[EnvEntry], List[EnvLineError]]:
    return parse_env_text(path.read_text(encoding="utf-8"))
