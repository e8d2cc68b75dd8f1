"""Config files' YAML, decoded with every mapping key given once.

PyYAML's ``safe_load`` takes a key given twice as its last value, silently: a second ``limits:`` block
appended to a gateway file drops every knob of the first. Go's yaml.v3 (Kubernetes tooling) refuses it
("mapping key ... already defined"); so does ``safe_load`` here, naming the key's path and both lines.
Every config file kvgate reads (the gateway file, EndpointPickerConfig, the clusters file) goes through it.
"""

from __future__ import annotations

from typing import IO, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """``key`` (its path from the document's root: ``pools[0].endpoints``) given twice in one mapping."""

    def __init__(self, key: str, first: int, again: int, name: str) -> None:
        self.key = key
        where = f" of {name}" if name and not name.startswith("<") else ""
        self.detail = f"given twice (lines {first} and {again}{where})"
        super().__init__(f"{key}: {self.detail}")


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_unique_keys(root: Node) -> None:
    """Raise ``DuplicateKeyError`` for the first mapping holding a key twice (merge keys ``<<`` aside: an
    explicit key overriding a merged one is YAML's own rule). Each node is read once, so an alias bomb
    costs its node count, not its expansion."""
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    stack.append((value_node, path))
                    continue
                if not isinstance(key_node, ScalarNode):
                    continue  # (a complex key: no config file of kvgate has one; the schema refuses it)
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise DuplicateKeyError(
                        _child(path, key_node.value), lines[key], line, key_node.start_mark.name
                    )
                lines[key] = line
                stack.append((value_node, _child(path, key_node.value)))


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice (``check_unique_keys``)."""

    def construct_document(self, node: Node) -> Any:
        check_unique_keys(node)
        return super().construct_document(node)


def safe_load(stream: str | bytes | IO[str] | IO[bytes]) -> Any:
    """``yaml.safe_load``, except that a key given twice raises ``DuplicateKeyError`` (a ``YAMLError``)."""
    return yaml.load(stream, Loader=UniqueKeyLoader)  # (a SafeLoader subclass: no arbitrary objects)
