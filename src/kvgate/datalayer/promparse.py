"""A Prometheus text-format reader that only looks at the series the picker needs.

A vLLM ``/metrics`` page is tens of KB, almost all histogram buckets the picker never reads. Instead of
tokenising every line, ``find_samples`` jumps to lines that start with a wanted name using ``str.find``
(C speed) and parses only those. Checked against ``prometheus_client``'s parser by hypothesis fuzzing
(tests/datalayer/test_promparse.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

Labels = dict[str, str]
Sample = tuple[Labels, float]

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class ParseError(ValueError):
    pass


def _parse_labels(line: str, i: int) -> tuple[Labels, int]:
    """Parse ``{a="x",b="y"}`` starting at ``line[i] == '{'``; returns labels and the index after '}'."""
    labels: Labels = {}
    n = len(line)
    i += 1
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            raise ParseError("unterminated label set")
        if line[i] == "}":
            return labels, i + 1
        eq = line.find("=", i)
        if eq < 0:
            raise ParseError("label without '='")
        name = line[i:eq].strip()
        i = eq + 1
        while i < n and line[i] in " \t":
            i += 1
        if i >= n or line[i] != '"':
            raise ParseError("label value not quoted")
        i += 1
        start = i
        parts: list[str] = []
        while True:
            j = line.find('"', i)
            k = line.find("\\", i)
            if j < 0:
                raise ParseError("unterminated label value")
            if 0 <= k < j:  # an escape before the closing quote
                if k + 1 >= n:
                    raise ParseError("dangling escape")
                parts.append(line[start:k])
                parts.append(_ESCAPES.get(line[k + 1], "\\" + line[k + 1]))
                i = start = k + 2
                continue
            parts.append(line[start:j])
            i = j + 1
            break
        labels[name] = "".join(parts)
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ",":
            i += 1


def _parse_value(text: str) -> float:
    t = text.strip()
    if t in ("+Inf", "Inf"):
        return math.inf
    if t == "-Inf":
        return -math.inf
    return float(t)


def parse_line(line: str, name_len: int) -> Sample:
    """Parse one sample line whose metric name is ``line[:name_len]``."""
    i = name_len
    labels: Labels = {}
    if i < len(line) and line[i] == "{":
        labels, i = _parse_labels(line, i)
    rest = line[i:].split()
    if not rest:
        raise ParseError("sample without value")
    return labels, _parse_value(rest[0])  # rest[1], if any, is a timestamp we do not need


def find_samples(text: str, names: Iterable[str]) -> dict[str, list[Sample]]:
    """All samples of each wanted metric name (exact name match; malformed lines are skipped)."""
    out: dict[str, list[Sample]] = {}
    for name in names:
        found: list[Sample] = []
        nl = len(name)
        if text.startswith(name):
            pos = 0
        else:
            pos = text.find("\n" + name)
            if pos >= 0:
                pos += 1
        while pos >= 0:
            end = text.find("\n", pos)
            line = text[pos:] if end < 0 else text[pos:end]
            nxt = line[nl : nl + 1]
            if nxt in ("{", " ", "\t"):  # exact name, not a longer name sharing the prefix
                with contextlib.suppress(ParseError, ValueError):
                    found.append(parse_line(line.rstrip("\r"), nl))
            if end < 0:
                break
            pos = text.find("\n" + name, end)
            if pos >= 0:
                pos += 1
        if found:
            out[name] = found
    return out
