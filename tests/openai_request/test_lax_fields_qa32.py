"""qa32a Q1: the typed fields both doors read (``stream``, the output limits, ``n``) are read as vLLM's lax
pydantic models read them (``lax_int``, ``lax_bool``), held here to pydantic itself (pydantic 2, in the test
environment through the openai SDK): what it takes, kvgate takes as the same value; what it refuses, kvgate
refuses. Fails on main aa46aa9a (no ``lax_int`` / ``lax_bool``; ``parse_body`` 400s ``"stream": "true"``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.openai.request import (
    CHAT,
    COMPLETIONS,
    GENERATE,
    MESSAGES,
    RESPONSES,
    BodyError,
    lax_bool,
    lax_int,
    parse_body,
)

pydantic = pytest.importorskip("pydantic")
INT = pydantic.TypeAdapter(int)
BOOL = pydantic.TypeAdapter(bool)
INT64 = 1 << 63

INTS: list[Any] = [
    5, -5, 0, True, False, 5.0, 5.5, -0.0, 1e18, 1e19, 1e20, float("nan"), float("inf"), None, [5], {"a": 1},
    "5", " 5", "5 ", "\t5\n", "\xa05", "\u30005", "\x1c5", "\x855", "+5", "-5", "05", "00", "-0", "5.0",
    "5.00", "+5.0", "-0.0", "0005.0", "5.", ".0", "5.5", "5.0_0", "1_0.0", "1_000", "_1", "1_", "1__0",
    "1e2", "0x10", "0b1", "", " ", "+ 5", "+-5", "5.0.0", "\u0661", "\uff15", "5\x00",
    "9" * 19, "-" + "9" * 19,
    "1" * 30, "1" * 4300, "1" * 4301, "0" * 5000 + "7", "1_" * 4299 + "1", "5.0 ", "True", "true",
]  # fmt: skip
BOOLS: list[Any] = [
    True, False, 0, 1, 2, -1, 0.0, 1.0, 0.5, -0.0, None, [], "true", "True", "TRUE", "tRuE", "t", "T",
    "yes", "Y", "on", "ON", "1", "0", "false", "f", "no", "n", "off", "", " true", "true ", "2", "1.0",
    "0.0", "yess", "nope", "truE\n",
]  # fmt: skip


def _pydantic(adapter: Any, value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError:
        return None


def _as_int64(n: int | None) -> int | None:
    # (a string past 64 bits is read as the nearest 64-bit integer: lax_int's documented bound)
    return None if n is None else max(-INT64, min(n, INT64 - 1))


@pytest.mark.parametrize("value", INTS, ids=lambda v: repr(v)[:24])
def test_lax_int_reads_what_pydantic_reads(value: Any) -> None:
    got = lax_int(value)
    assert got == _as_int64(_pydantic(INT, value)), value
    assert got is None or type(got) is int


@pytest.mark.parametrize("value", BOOLS, ids=lambda v: repr(v)[:24])
def test_lax_bool_reads_what_pydantic_reads(value: Any) -> None:
    got = lax_bool(value)
    assert got is _pydantic(BOOL, value), value


@settings(max_examples=300)
@given(st.text(alphabet="0123456789_+-. \t\xa0\x1cetruyfalsonTY", max_size=12))
def test_lax_fields_agree_with_pydantic_on_short_strings(text: str) -> None:
    assert lax_int(text) == _as_int64(_pydantic(INT, text))
    assert lax_bool(text) is _pydantic(BOOL, text)


CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("kind", "extra", "stream", "max_tokens", "sequences"),
    [
        (CHAT, {"stream": "true"}, True, None, 1),
        (CHAT, {"stream": 1, "max_tokens": "5"}, True, 5, 1),
        (CHAT, {"stream": "off", "n": "2"}, False, None, 2),
        (CHAT, {"max_completion_tokens": " 7 ", "max_tokens": 3}, False, 7, 1),
        (COMPLETIONS, {"prompt": "p", "stream": "1", "max_tokens": "3", "n": True}, True, 3, 1),
        (RESPONSES, {"input": "p", "stream": "yes", "max_output_tokens": "5.0"}, True, 5, 1),
        (MESSAGES, {"stream": "t", "max_tokens": "5"}, True, 5, 1),
        (GENERATE, {"token_ids": [1, 2], "sampling_params": {"n": "2", "max_tokens": "4"}}, False, 4, 2),
    ],
)
def test_parse_body_reads_lax_fields(
    kind: str, extra: dict, stream: bool, max_tokens: int, sequences: int
) -> None:
    body = {**CHAT_BODY, **extra}
    if kind in (COMPLETIONS, GENERATE):
        del body["messages"]
    parsed = parse_body(kind, orjson.dumps(body))
    assert (parsed.stream, parsed.sequences) == (stream, sequences)
    assert parsed.max_tokens == max_tokens or (kind == CHAT and max_tokens is None)
    assert parsed.body == body  # (the body goes on as sent)


@pytest.mark.parametrize(
    ("kind", "extra", "param"),
    [
        (CHAT, {"stream": "maybe"}, "stream"),
        (CHAT, {"stream": 2}, "stream"),
        (CHAT, {"stream": " true"}, "stream"),
        (CHAT, {"max_tokens": "5.5"}, "max_tokens"),
        (CHAT, {"max_tokens": "1e2"}, "max_tokens"),
        (CHAT, {"n": "0"}, "n"),
        (CHAT, {"n": "two"}, "n"),
        (MESSAGES, {"max_tokens": "0"}, "max_tokens"),
        (MESSAGES, {"max_tokens": False}, "max_tokens"),
    ],
)
def test_parse_body_refuses_what_pydantic_refuses(kind: str, extra: dict, param: str) -> None:
    with pytest.raises(BodyError) as refused:
        parse_body(kind, orjson.dumps({**CHAT_BODY, **extra}))
    assert refused.value.param == param


# qa32a Q2: ``prompt_embeds`` in place of ``prompt`` (fails on main aa46aa9a: 400 "'prompt' is required").
@pytest.mark.parametrize(
    ("extra", "sequences"),
    [({"prompt_embeds": "AAAA"}, 1), ({"prompt_embeds": ["AAAA", "BBBB"], "n": 2}, 4),
     ({"prompt": "hi", "prompt_embeds": ["AAAA"]}, 2), ({"prompt": None, "prompt_embeds": "AAAA"}, 1)],
)  # fmt: skip
def test_prompt_embeds_stand_for_the_prompt(extra: dict, sequences: int) -> None:
    parsed = parse_body(COMPLETIONS, orjson.dumps({"model": "m", **extra}))
    assert parsed.sequences == sequences
    assert parsed.prompt_text == ("hi" if extra.get("prompt") else "")


@pytest.mark.parametrize("extra", [{}, {"prompt_embeds": []}, {"prompt": None}, {"prompt_embeds": None}])
def test_neither_prompt_nor_embeds_is_vllms_400(extra: dict) -> None:
    with pytest.raises(BodyError) as refused:
        parse_body(COMPLETIONS, orjson.dumps({"model": "m", **extra}))
    assert (refused.value.param, refused.value.message) == (
        "prompt",
        "Either prompt or prompt_embeds must be provided and non-empty.",
    )


# qa32a Q6: a UTF-8 byte order mark before the JSON (fails on main aa46aa9a: 400 "not valid JSON").
def test_a_byte_order_mark_is_read_past() -> None:
    raw = b"\xef\xbb\xbf" + orjson.dumps({**CHAT_BODY, "max_tokens": 3})
    parsed = parse_body(CHAT, bytearray(raw))
    assert (parsed.model, parsed.max_tokens, parsed.body_bytes) == ("m", 3, len(raw))
    with pytest.raises(BodyError):
        parse_body(CHAT, b"\xef\xbb\xbf")
