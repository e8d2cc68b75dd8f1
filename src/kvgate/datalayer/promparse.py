"""A Prometheus text-format reader that only looks at the series the picker needs.

A vLLM ``/metrics`` page is tens of KB, almost all histogram buckets the picker never reads. Instead of
tokenising every line, ``find_samples`` jumps to lines that start with a wanted name using ``str.find``
(C speed) and parses only those. Checked against ``prometheus_client``'s parser by hypothesis fuzzing
(tests/datalayer/test_promparse.py).

A server renders the same label sets scrape after scrape (only the values move), and one of them is
long: vLLM's ``cache_config_info`` carries ~40 labels, most of a filtered page's parse time. So parsed
label sets are kept by their text (``_LABELS``, the least recently used evicted past
``LABEL_CACHE_BYTES``): a label set seen before costs one dict lookup and a copy instead of a
character walk (``kvgate bench scrape-cpu``).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections import OrderedDict
from collections.abc import Iterable

Labels = dict[str, str]
Sample = tuple[Labels, float]

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
# Parsed label sets by their text ``{...}``, least recently used first, bounded by their measured size
# (``_entry_bytes``: the key, the dict and its strings, and the cache's own per-entry overhead, as
# tracemalloc counts them; tests/datalayer/test_promparse.py checks the two agree). Past the bound the
# least recently used go, one at a time, so the label sets every scrape renders stay while a label
# that changes every scrape (a request id, vLLM's ``lora_requests_info`` with many adapters) churns
# through the rest. One cache per process (each ``--workers`` process has its own).
LABEL_CACHE_BYTES = 4 << 20
_LABELS: OrderedDict[str, tuple[Labels, int]] = OrderedDict()  # key -> (labels, measured bytes)
_label_bytes = 0
_ENTRY_OVERHEAD = 160  # the (labels, size) tuple, its int and the OrderedDict's link and table slot


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


def _entry_bytes(key: str, labels: Labels) -> int:
    size = sys.getsizeof(key) + sys.getsizeof(labels) + _ENTRY_OVERHEAD
    for name, value in labels.items():
        size += sys.getsizeof(name) + sys.getsizeof(value)
    return size


def _cached_labels(line: str, i: int) -> tuple[Labels, int]:
    """``_parse_labels`` through the label-set cache. The key runs to the line's last ``}`` (values and
    timestamps hold none, label values may); a label set whose parse does not end there is malformed
    for the key and is not cached. Each caller gets its own dict."""
    global _label_bytes
    end = line.rfind("}") + 1
    key = line[i:end]
    hit = _LABELS.get(key)
    if hit is not None:
        _LABELS.move_to_end(key)
        return dict(hit[0]), end
    labels, j = _parse_labels(line, i)
    if j == end:
        size = _entry_bytes(key, labels)
        if size <= LABEL_CACHE_BYTES // 16:  # one huge label set does not empty the cache
            while _LABELS and _label_bytes + size > LABEL_CACHE_BYTES:
                _label_bytes -= _LABELS.popitem(last=False)[1][1]
            _LABELS[key] = (dict(labels), size)
            _label_bytes += size
    return labels, j


def parse_line(line: str, name_len: int) -> Sample:
    """Parse one sample line whose metric name is ``line[:name_len]``."""
    i = name_len
    labels: Labels = {}
    if i < len(line) and line[i] == "{":
        labels, i = _cached_labels(line, i)
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
