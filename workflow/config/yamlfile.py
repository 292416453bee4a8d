"""Read the YAML config keeping the line of every key, for errors and ``Config.sources``.

``yaml.safe_load`` forgets where things were; composing the node tree first and
constructing from it gives the same values plus each key's line, in one parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

Path_ = Tuple[Any, ...]


@dataclass
class YamlDoc:
    data: Any
    """The document as ``safe_load`` would return it (None for an empty file)."""
    lines: Dict[Path_, int] = field(default_factory=dict)
    """Key path (``('sweep', 'on_failure')``, list items by index) -> 1-based line."""
    duplicates: List[Tuple[Path_, int]] = field(default_factory=list)
    """Keys given twice in one mapping (path, line of the repeat)."""


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def _index(node: Any, path: Path_, doc: YamlDoc) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                continue
            sub = path + (key,)
            line = key_node.start_mark.line + 1
            if key in seen:
                doc.duplicates.append((sub, line))
            seen.add(key)
            doc.lines[sub] = line
            _index(value_node, sub, doc)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = path + (i,)
            doc.lines[sub] = item.start_mark.line + 1
            _index(item, sub, doc)


#: Documents parsed ahead by their whole text (``parse_ahead``): the warm CLI server
#: parses its project's config once, and each command it forks finds it here while the
#: file holds the same text.
_ahead: Dict[str, YamlDoc] = {}


def parse_ahead(text: str) -> None:
    """Parse ``text`` now; a later ``read_yaml`` of the same text gets a copy."""
    _ahead[text] = read_yaml(text)


def read_yaml(text: str) -> YamlDoc:
    """Parse ``text``; raises ``YamlSyntaxError`` (with the line) on bad YAML."""
    ahead = _ahead.get(text)
    if ahead is not None:
        import copy

        return copy.deepcopy(ahead)
    import yaml

    try:
        # the Reader checks every character here (a stray control character raises)
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        raise YamlSyntaxError(line, f"YAML syntax error: character {exc.character:#06x} is not allowed "
                                    "(a control character; save the file as plain UTF-8 text)") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(data=None)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise YamlSyntaxError(line, f"YAML syntax error: {what or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, f"YAML syntax error: {exc}") from None
    finally:
        loader.dispose()
    doc = YamlDoc(data=data)
    _index(node, (), doc)
    return doc
