"""The nesting bound read from the body's bytes (``_nested_over``, review s22-rev22a F4): the same verdict
as the walk over the parsed body (``_too_deep``), strings holding brackets, quotes and backslashes included.

The walk visited every node in Python (2.8M ``{}`` messages, an 8 MiB body: 3 s on the door's event loop);
the bytes' check runs in C passes and leaves the walk to name the key of a body it refuses.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.openai import request as R
from kvgate.openai.request import CHAT, MAX_NESTING, BodyError, parse_body

# Strings that look like JSON structure: brackets, quotes, backslashes (escaped by the encoder).
_TRICKY = st.text(alphabet='[]{}"\\\\ax:,\n', max_size=12)
_LEAF = st.none() | st.integers(-5, 5) | _TRICKY
_JSON = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=80,
)


def _chain(depth: int, leaf: object = None) -> object:
    node: object = [] if leaf is None else leaf
    for _ in range(depth - 1):
        node = [node]
    return node


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON, st.integers(2, 8))  # (the walk counts a top-level value as level 2 even a leaf)
def test_the_bytes_check_agrees_with_the_walk(value: object, limit: int) -> None:
    body = {"model": "m", "x": value}
    raw = orjson.dumps(body)
    old = R.MAX_NESTING
    try:
        R.MAX_NESTING = limit  # (``_too_deep`` reads the module's limit)
        want = R._too_deep(body) is not None
    finally:
        R.MAX_NESTING = old
    assert R._nested_over(raw, limit) is want, raw


@pytest.mark.parametrize("text", ['"[[[[', "\\\\[[[[", '\\"{{{{', "]]]]}}}}", '\\\\\\"[[['])
def test_a_deep_body_is_refused_and_a_deep_string_is_not(text: str) -> None:
    # At the limit (the body's object is level 1), with a string of brackets in the innermost list.
    ok = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "x": _chain(MAX_NESTING - 1, [text * 40]),
    }
    assert parse_body(CHAT, orjson.dumps(ok)).model == "m"
    deep = dict(ok, x=_chain(MAX_NESTING, [text * 40]))
    with pytest.raises(BodyError) as e:
        parse_body(CHAT, orjson.dumps(deep))
    assert e.value.param == "x"
    # Many leaf containers (the cheap passes' case) and one chain among them, levels 4 to 64.
    wide = {"model": "m", "messages": [{}] * 5000 + [{"role": "user", "content": _chain(MAX_NESTING - 3)}]}
    assert R._nested_over(orjson.dumps(wide), MAX_NESTING) is False
    wide["messages"][-1]["content"] = _chain(MAX_NESTING - 2)  # (levels 4 to 65)
    assert R._nested_over(orjson.dumps(wide), MAX_NESTING) is True
