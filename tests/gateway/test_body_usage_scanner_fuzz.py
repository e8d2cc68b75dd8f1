"""``BodyUsageScanner`` (the usage of a relayed big JSON answer, read as it passes) against a reference:
``json.loads`` of the whole body, its top-level ``usage``. Session 17's closing note (review s17-fixes-b
L4, L5): the scanner did not track JSON depth (a nested ``usage`` object before the top-level one was
taken), and missed the usage after more than 64 backslashes in a key or ~57 whitespace bytes before the
``:`` at a chunk boundary. Now it lexes strings and nesting (linear, in C but per escaped quote and per
string left open at a chunk's end); the fuzz draws bodies with nested and decoy ``usage`` keys, strings
full of quotes, backslashes and brackets, long whitespace before ``:``, and random chunkings."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.openai.protocol import usage_from
from kvgate.openai.usage import BodyUsageScanner
from kvgate.scheduling.types import Usage

# Text that stresses the lexer: quotes, backslashes (runs), brackets, the key itself, whitespace.
_PIECES = ['"', "\\", "\\\\" * 40, "{", "}", "[", "]", ":", '"usage"', "usage", '\\"usage\\":', " ", "\n"]
_piece = st.sampled_from([*_PIECES, "é"]) | st.text(string.ascii_letters, max_size=5)
_text = st.lists(_piece, max_size=12).map("".join)
_counts = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)}
)
_usage_value = _counts | st.none() | st.integers() | _text | st.lists(st.integers(), max_size=3)


def _keys() -> st.SearchStrategy[str]:
    return st.sampled_from(["usage", "a", "\\" * 70 + '"usage', '"usage', "usage\\", "u"]) | _text


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text | _counts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys(), inner | _counts, max_size=4),
    max_leaves=20,
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    top: dict[str, Any] = draw(st.dictionaries(_keys().filter(lambda k: k != "usage"), _values, max_size=6))
    if draw(st.booleans()):  # the top-level usage, anywhere among the keys
        items = list(top.items())
        items.insert(draw(st.integers(0, len(items))), ("usage", draw(_usage_value)))
        top = dict(items)
    colon = " " * draw(st.sampled_from([0, 1, 3, 60, 200])) + ":" + " " * draw(st.sampled_from([0, 1, 70]))
    return json.dumps(top, separators=(",", colon), ensure_ascii=draw(st.booleans())).encode()


def _reference(body: bytes) -> Usage | None:
    return usage_from({"usage": json.loads(body).get("usage")})


def _scan(body: bytes, cuts: list[int]) -> Usage | None:
    s = BodyUsageScanner()
    at = 0
    for cut in sorted(c % (len(body) + 1) for c in cuts):
        s.feed(body[at:cut])
        at = cut
    s.feed(body[at:])
    return s.usage()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies(), st.lists(st.integers(0, 10**6), max_size=8))
def test_the_scanner_reads_the_top_level_usage_at_any_chunking(body: bytes, cuts: list[int]) -> None:
    assert _scan(body, cuts) == _reference(body)


@settings(max_examples=60, deadline=None)
@given(_bodies())
def test_the_scanner_reads_the_top_level_usage_byte_by_byte(body: bytes) -> None:
    s = BodyUsageScanner()
    for i in range(len(body)):
        s.feed(body[i : i + 1])
    assert s.usage() == _reference(body)


USAGE = {"prompt_tokens": 3, "completion_tokens": 4}


def _every_split(body: bytes) -> None:
    want = _reference(body)
    assert want is not None
    for a in range(len(body) + 1):
        for b in range(a, len(body) + 1, 3):
            assert _scan(body, [a, b]) == want, (a, b)


def test_a_nested_usage_before_the_top_level_one_is_not_taken() -> None:
    body = json.dumps({"choices": [{"usage": {"prompt_tokens": 99}}], "x": {"usage": {}}, "usage": USAGE})
    _every_split(body.encode())


def test_a_key_with_70_backslashes_then_a_quote_before_usage() -> None:
    body = json.dumps({"\\" * 70 + '"usage': {"prompt_tokens": 99}, "usage": USAGE})
    _every_split(body.encode())


def test_200_whitespace_bytes_before_the_colon() -> None:
    body = json.dumps({"a": "b", "usage": USAGE}, separators=(",", " " * 200 + ":")).encode()
    _every_split(body)
