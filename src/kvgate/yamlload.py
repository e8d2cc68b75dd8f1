"""Config files' YAML, decoded with every mapping key given once.

PyYAML's ``safe_load`` takes a key given twice as its last value, silently: a second ``limits:`` block
appended to a gateway file drops every knob of the first. Go's yaml.v3 (Kubernetes tooling) refuses it
("mapping key ... already defined"); so does ``safe_load`` here, naming the key's path and both lines.
Every config file kvgate reads (the gateway file, EndpointPickerConfig, the clusters file) goes through it.
"""

from __future__ import annotations

import io
import os
import sys
from typing import IO, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MERGE = "tag:yaml.org,2002:merge"
_INT = "tag:yaml.org,2002:int"


class KeyedError(yaml.YAMLError):
    """A document refused at ``key`` (its path from the document's root: ``pools[0].endpoints``)."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"{key}: {detail}")


class DuplicateKeyError(KeyedError):
    """``key`` given twice in one mapping."""

    def __init__(self, key: str, first: int, again: int, name: str) -> None:
        where = f" of {name}" if name and not name.startswith("<") else ""
        super().__init__(key, f"given twice (lines {first} and {again}{where})")


class IntegerTooLongError(KeyedError):
    """An integer of more decimal digits than ``int()`` reads (``sys.get_int_max_str_digits()``, 4300):
    PyYAML's own error is a bare ``ValueError`` naming nothing (review rev-d36 F3)."""


def _check_int(node: ScalarNode, path: str) -> None:
    limit = sys.get_int_max_str_digits()
    if node.tag != _INT or not limit or len(node.value) <= limit:
        return  # (the cheap test first: nearly every scalar stops here)
    digits = node.value.lstrip("+-").replace("_", "")
    if digits.isdigit() and len(digits) > limit and not digits.startswith("0"):  # ("0..." is octal: no limit)
        line = node.start_mark.line + 1
        raise IntegerTooLongError(
            path or "config", f"an integer of {len(digits)} digits (line {line}): the most is {limit}"
        )


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_unique_keys(root: Node) -> None:
    """Raise ``DuplicateKeyError`` for the first mapping holding a key twice (merge keys ``<<`` aside: an
    explicit key overriding a merged one is YAML's own rule), ``IntegerTooLongError`` for an integer
    ``int()`` cannot read. Each node is read once, so an alias bomb costs its node count, not its
    expansion."""
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            _check_int(node, path)
        elif isinstance(node, SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    stack.append((value_node, path))
                    continue
                if not isinstance(key_node, ScalarNode):
                    continue  # (a complex key: no config file of kvgate has one; the schema refuses it)
                _check_int(key_node, path)
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


# The most a config file may hold: a Kubernetes ConfigMap's whole data is 1 MiB, so no file mounted from one
# is refused. PyYAML parses ~1-2 MB/s in pure Python: an 8 MB file held a reload 8.7 s (review qa36a F10).
# ``KVGATE_MAX_CONFIG_BYTES`` raises (or lowers) it.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_BYTES_ENV = "KVGATE_MAX_CONFIG_BYTES"


class TooLargeError(ValueError):
    """A config file over ``max_config_bytes()``."""


def max_config_bytes() -> int:
    raw = os.environ.get(MAX_CONFIG_BYTES_ENV)
    if not raw:
        return MAX_CONFIG_BYTES
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n <= 0:
        raise TooLargeError(f"{MAX_CONFIG_BYTES_ENV}: must be a whole number of bytes > 0, got {raw!r}")
    return n


def read_config(path: str | os.PathLike[str]) -> io.StringIO:
    """The config file ``path`` (UTF-8) as a stream for ``safe_load`` (its errors name the file), at most
    ``max_config_bytes()`` of it: more is a ``TooLargeError`` naming the file and the limit, read no
    further. ``OSError`` as ``open``'s; ``UnicodeDecodeError`` (a ``ValueError``) for what is not UTF-8."""
    limit = max_config_bytes()
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(
            f"{os.fspath(path)} is larger than {limit} bytes, the most a config file may hold ("
            f"{MAX_CONFIG_BYTES_ENV}; default 1 MiB, a ConfigMap's whole data)"
        )
    stream = io.StringIO(data.decode("utf-8"))
    setattr(stream, "name", os.fspath(path))  # noqa: B010 (PyYAML's marks name the file)
    return stream
