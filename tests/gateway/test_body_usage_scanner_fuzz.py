"""``BodyUsageScanner`` (the usage of a relayed big JSON answer, read as it passes) against a reference:
``json.loads`` of the whole body, its top-level ``usage``. Session 17's closing note (review s17-fixes-b
L4, L5): the scanner did not track JSON depth (a nested ``usage`` object before the top-level one was
taken), and missed the usage after more than 64 backslashes in a key or ~57 whitespace bytes before the
``:`` at a chunk boundary. Now it lexes strings and nesting (linear, in C but per escaped quote and per
string left open at a chunk's end); the fuzz draws bodies with nested and decoy ``usage`` keys, strings
full of quotes, backslashes and brackets, long whitespace before ``:``, and random chunkings.

Session 18's closing note: the key spelled with ``\\u`` escapes (``"\\u0075sage"``, JSON's same key) was
missed, by the scanner, the whole-body reader and the stream tail; and an event cut at the stream tail's
start took the first ``"usage":`` key of any depth (a choice's, a tool schema's). The bodies now spell some
``"usage"`` strings with escapes, and cut events are checked against ``json.loads`` of the whole event."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.openai.protocol import usage_from
from kvgate.openai.usage import BodyUsageScanner, last_usage, usage_from_body
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


_floats = st.floats(allow_nan=False, allow_infinity=False)  # (JSON has no Infinity; json.dumps writes it)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _floats | _text | _counts,
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
    body = json.dumps(top, separators=(",", colon), ensure_ascii=draw(st.booleans())).encode()
    return _escaped(body, draw(st.lists(st.integers(0, 31), max_size=4)))


def _escaped(body: bytes, masks: list[int]) -> bytes:
    """``body`` with the letters of its first ``len(masks)`` ``"usage"`` strings (keys or values, the
    same JSON either way) written as ``\\u`` escapes where each mask's bits say."""
    parts = body.split(b'"usage"')
    out = [parts[0]]
    for k, part in enumerate(parts[1:]):
        mask = masks[k] if k < len(masks) else 0
        word = b"".join(b"\\u%04x" % c if mask >> j & 1 else bytes([c]) for j, c in enumerate(b"usage"))
        out += [b'"' + word + b'"', part]
    return b"".join(out)


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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies())
def test_the_whole_body_reader_reads_the_top_level_usage(body: bytes) -> None:
    assert usage_from_body(body) == _reference(body)


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


def test_a_key_spelled_with_escapes_is_the_key() -> None:
    body = json.dumps({"a": "b", "usage": USAGE}).encode().replace(b'"usage"', b'"\\u0075s\\u0061ge"')
    assert json.loads(body)["usage"] == USAGE
    _every_split(body)
    assert usage_from_body(body) == _reference(body)
    assert last_usage(b"data: " + body + b"\n\n") == _reference(body)


# -- an event cut at the stream tail's start (``last_usage``) -------------------------------------------

# Values holding decoy ``usage`` keys, put at depth 3 or more (in a list under a top-level key): a cut
# event's reader takes a ``usage`` at depth 1 or 2 (a Responses ``response``'s, an Anthropic ``message``'s).
_deep = st.lists(_values, min_size=1, max_size=3)
_others = st.dictionaries(
    _keys().filter(lambda k: k not in ("usage", "response", "message")), _deep, max_size=4
)


@st.composite
def _events(draw: st.DrawFn) -> tuple[bytes, int]:
    """A stream event's JSON whose one usage is at the top or in ``response`` / ``message`` (among decoys),
    and where its key starts."""

    def place(obj: dict[str, Any], item: tuple[str, Any]) -> dict[str, Any]:
        items = list(obj.items())
        items.insert(draw(st.integers(0, len(items))), item)
        return dict(items)

    usage = ("usage", draw(_usage_value))
    where = draw(st.sampled_from(["usage", "response", "message"]))
    top = draw(_others)
    if where == "usage":
        top = place(top, usage)
    else:
        top = place(top, (where, place(draw(_others), usage)))
    data = json.dumps(top, ensure_ascii=draw(st.booleans())).encode()
    # The usage key is the only ``"usage":`` at depth 1 or 2; it is found as the first such key.
    data = _escaped(data, draw(st.lists(st.integers(0, 31), max_size=4)))
    obj = json.loads(data)
    assert usage_from(obj) == usage_from({where: obj[where]} if where != "usage" else {"usage": obj["usage"]})
    return data, _key_at(data, where)


def _key_at(data: bytes, where: str) -> int:
    """Where the event's own usage key starts in ``data``: lexed, the key at depth 1 or in ``where``."""
    depth, i, n, in_str, want, inside = 0, 0, len(data), False, 1 if where == "usage" else 2, where == "usage"
    while i < n:
        c = data[i]
        if in_str:
            if c == 0x5C:
                i += 2
                continue
            if c == 0x22:
                in_str = False
            i += 1
            continue
        if c == 0x22:
            end = i + 1
            while data[end] != 0x22:
                end += 2 if data[end] == 0x5C else 1
            key = json.loads(data[i : end + 1])
            after = data[end + 1 :].lstrip()
            if after[:1] == b":" and depth == 1 and key == where and where != "usage":
                inside = True
            elif after[:1] == b":" and depth == want and inside and key == "usage":
                return i
            in_str = True
        elif c in b"{[":
            depth += 1
        elif c in b"}]":
            depth -= 1
            if depth == 1 and where != "usage":
                inside = False
        i += 1
    raise AssertionError("no usage key")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_events(), st.integers(0, 10**6))
def test_a_cut_event_reads_its_own_usage_or_none(event: tuple[bytes, int], cut: int) -> None:
    data, key = event
    ev = b"data: " + data + b"\n\n"
    c = cut % (len(ev) + 1)
    want = usage_from(json.loads(data)) if c <= key + len(b"data: ") - 1 or c == 0 else None
    assert last_usage(ev[c:]) == want, (c, key)


def test_a_cut_event_does_not_take_a_nested_usage() -> None:
    data = json.dumps({"choices": [{"usage": {"prompt_tokens": 99, "completion_tokens": 9}}], "usage": USAGE})
    ev = f"data: {data}\n\n".encode()
    for c in range(1, ev.index(b'"usage"')):  # (the nested key is the first; each cut keeps it)
        assert last_usage(ev[c:]) == usage_from({"usage": USAGE}), c
