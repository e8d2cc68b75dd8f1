"""Review s22-media (its tests, kept; M1 and M2 fixed by the lead): the bytes' nesting check against an
independent depth, render_chat's fast path against the pre-change loop, the estimate across both doors'
parser."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgate.openai import request as R
from kvgate.openai.request import CHAT, MAX_NESTING, BodyError, parse_body

_ALPHA = st.sampled_from([*list('[]{}"\\/ \n\tauU0'), "é", "\u2028", "😀", "\x00", "\x7f", "\\u"])
_STR = st.lists(_ALPHA, max_size=10).map("".join)
_LEAF = (
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False) | _STR
)
_JSON = st.recursive(
    _LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_STR, inner, max_size=3), max_leaves=60
)


def depth(v: Any) -> int:
    """Containers' depth, the body's object 1 (independent of kvgate: recursion over orjson.loads)."""
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    return 0


def _enc_str(s: str, how: list[int]) -> str:
    """A JSON string with every character escaped one of several legal ways (chosen by ``how``)."""
    out = ['"']
    for i, c in enumerate(s):
        k = how[i % len(how)] if how else 0
        if c == '"':
            out.append(['\\"', "\\u0022", '\\"'][k % 3])
        elif c == "\\":
            out.append(["\\\\", "\\u005c", "\\u005C"][k % 3])
        elif c == "/":
            out.append(["/", "\\/", "\\u002f"][k % 3])
        elif ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        elif c in "[]{}" and k % 3 == 1:
            out.append(f"\\u{ord(c):04X}")
        elif ord(c) > 0xFFFF and k % 3 == 2:
            n = ord(c) - 0x10000
            out.append(f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _enc(v: Any, how: list[int], ws: str) -> str:
    if isinstance(v, dict):
        items = [f"{ws}{_enc_str(k, how)}{ws}:{ws}{_enc(x, how[::-1], ws)}" for k, x in v.items()]
        return "{" + ",".join(items) + ws + "}"
    if isinstance(v, list):
        return "[" + ws + ",".join(ws + _enc(x, how[1:] + how[:1], ws) for x in v) + ws + "]"
    if isinstance(v, str):
        return _enc_str(v, how)
    return json.dumps(v)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _JSON,
    st.integers(2, 9),
    st.lists(st.integers(0, 2), max_size=5),
    st.sampled_from(["", " ", "\n\t "]),
    st.integers(0, 2),
)
def test_bytes_check_equals_an_independent_depth(
    value: Any, limit: int, how: list[int], ws: str, enc: int
) -> None:
    body = {"model": "m", "x": value}
    if enc == 0:
        raw = _enc(body, how, ws).encode()
    elif enc == 1:
        raw = json.dumps(body, ensure_ascii=True, indent=1 if ws else None).encode()
    else:
        raw = orjson.dumps(body)
    parsed = orjson.loads(raw)  # (orjson accepts it: what parse_body would see)
    assert parsed == body or value != value
    assert R._nested_over(raw, limit) is (depth(parsed) > limit), raw
    assert R._nested_over(bytearray(raw), limit) is (depth(parsed) > limit), raw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_STR, st.lists(st.integers(0, 2), max_size=5), st.integers(0, 3))
def test_the_bound_at_the_limit_with_hostile_strings(s: str, how: list[int], extra: int) -> None:
    """A chain to 64 accepted, to 65 refused, the string (escaped any legal way) inside at any level."""
    for total, refused in ((MAX_NESTING, False), (MAX_NESTING + 1 + extra, True)):
        node: Any = [s * 5, {"k": s}]
        for _ in range(total - 3):  # body 1, "x" list 2, ... , the inner {"k"} the deepest
            node = [s, node, s]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": node}
        raw = _enc(body, how, "").encode()
        assert depth(orjson.loads(raw)) == total
        try:
            parse_body(CHAT, raw)
            got = False
        except BodyError as e:
            got = e.param == "x"
        assert got is refused


def test_a_duplicate_key_does_not_buy_the_python_walk() -> None:
    """Finding 2: orjson keeps the last of duplicate keys, so ``{"x": <65 deep>, "x": 1, ...}`` passes the
    bytes' check (deep) and then the Python walk over every node finds nothing and accepts: the walk the fix
    meant to skip runs in full (8 MiB of ``{}`` messages after it: 4,016 ms vs 926 ms without the key, load
    ~2.7), and the forwarded bytes nest past ``MAX_NESTING``. A body whose bytes nest past the bound should
    be refused (the key named where the walk finds it)."""
    deep: Any = []
    for _ in range(MAX_NESTING):
        deep = [deep]
    raw = (
        b'{"model":"m","x":'
        + orjson.dumps(deep)
        + b',"x":1,"messages":['
        + b"{}," * 1000
        + b'{"role":"user","content":"hi"}]}'
    )
    assert R._nested_over(raw, MAX_NESTING) is True
    walked: list[int] = []
    real = R._too_deep

    def spy(body: dict[str, Any]) -> str | None:
        walked.append(1)
        return real(body)

    R._too_deep = spy  # type: ignore[assignment]
    try:
        try:
            parse_body(CHAT, raw)
            refused = False
        except BodyError:
            refused = True
    finally:
        R._too_deep = real  # type: ignore[assignment]
    assert refused, "bytes nested 66 deep accepted (the walk ran over the whole body and found nothing)"


def _old_render_chat(messages: list[dict[str, Any]], tools: Any = None, system: Any = None) -> str:
    """render_chat's loop as 2130af8f had it (the slow path for every message)."""
    out = []
    budget = R.media_budget()
    if tools:
        out.append(f"<|tools|>\n{R._text(tools)}\n")
    if system:
        out.append(f"<|system|>\n{R._content(system, budget)}\n")
    for m in messages:
        text = R._content(m.get("content"), budget)
        extra = {k: v for k, v in m.items() if k not in ("role", "content")}
        if extra:
            text += R._text(extra)
        out.append(f"<|{R._text(m.get('role', ''))}|>\n{text}\n")
    return "".join(out)


_PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _STR}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["image_url", "file", "input_audio"]), "x": st.integers(0, 3)}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "content": st.lists(st.fixed_dictionaries({"text": _STR}), max_size=2),
        }
    ),
    _LEAF,
)
_CONTENT = (
    st.none()
    | _STR
    | st.lists(_PART, max_size=4)
    | st.integers(-9, 9)
    | st.dictionaries(_STR, _LEAF, max_size=2)
)
_ROLE = (
    st.sampled_from(["user", "assistant", "system", "tool", ""])
    | st.integers(-9, 9)
    | st.none()
    | st.lists(st.integers(-9, 9), max_size=2)
)
_MSG = st.fixed_dictionaries(
    {},
    optional={
        "role": _ROLE,
        "content": _CONTENT,
        "tool_calls": st.lists(st.dictionaries(_STR, _LEAF, max_size=2), max_size=2),
        "name": _STR,
        "tool_call_id": _STR,
    },
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_MSG, min_size=1, max_size=6),
    st.none() | st.lists(st.integers(-9, 9), max_size=2),
    st.none() | _STR,
)
def test_fast_path_renders_as_the_old_loop(messages: list[dict[str, Any]], tools: Any, system: Any) -> None:
    # Built through orjson as a body would be (key order kept).
    messages = orjson.loads(orjson.dumps(messages))
    assert R.render_chat(messages, tools, system) == _old_render_chat(messages, tools, system)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 150), st.integers(0, 3))
def test_estimate_counts_every_media_part_in_chat_and_responses(n: int, texts: int) -> None:
    parts = [{"type": "image_url", "image_url": {"url": f"data:,{i}"}} for i in range(n)]
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "ab" * texts}]}],
    }
    resp = {
        "model": "m",
        "input": [{"role": "user", "content": [dict(p, type="input_image") for p in parts]}],
    }
    c = parse_body(CHAT, orjson.dumps(chat))
    r = parse_body(R.RESPONSES, orjson.dumps(resp))
    base_c = len("<|user|>\n" + "ab" * texts + "\n")
    assert c.prompt_tokens == (n * R.MEDIA_PART_CHARS + base_c) // 4
    assert r.prompt_tokens == (n * R.MEDIA_PART_CHARS + len("<|user|>\n\n")) // 4


def test_the_bytes_check_holds_no_object_per_string() -> None:
    """Finding 1: ``s.split(b'"')`` makes one bytes object per string boundary: a 1 MiB body of empty
    strings (350k) with 70 brackets (past the pre-check) holds ~28x its size while the check runs (8 MiB:
    +195 MB RSS, +240 ms). The C passes' copies are each at most the body's size."""
    import tracemalloc

    n = (1 << 20) // 3
    raw = b'{"model":"m","x":[' + b'"",' * n + b'""],"y":' + b"[" * 70 + b"]" * 70 + b"}"
    tracemalloc.start()
    try:
        R._nested_over(raw, MAX_NESTING)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(raw), (peak, len(raw))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON, st.integers(2, 9), st.lists(st.integers(0, 2), max_size=5))
def test_strings_cut_in_c_keep_the_verdict(value: Any, limit: int, how: list[int]) -> None:
    raw = _enc({"model": "m", "x": value}, how, "").encode()
    assert R._nested_over(raw, limit) is (depth(orjson.loads(raw)) > limit), raw
