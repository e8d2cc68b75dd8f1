"""Review s19-gw L2 (98d5671): an event cut at the stream tail's start takes only its own usage, "the event's,
or its ``response`` / ``message`` object's" (docs/gateway.md), as ``usage_from`` reads the whole event; the
code took the ``usage`` of ANY object one level down. Now the key holding that object is read backward from
the first ``usage`` key (and the event's rest after it is read whole): an ``item``'s usage is not taken, a
``response``'s is. Where the cut dropped that key (a long answer's ``response.completed``: the usual case the
cut path exists for) the tail cannot tell which object it was, and its usage is still taken (the last test:
documented in docs/gateway.md; the review's own test, which cuts the ``item`` key off, is that case).

The item-key tests fail before the fix (903ccbe: the item's usage taken); the others pass before and after.
"""

from __future__ import annotations

import json

import pytest

from kvgate.openai.protocol import usage_from
from kvgate.openai.usage import last_usage

_USAGE = {"input_tokens": 5, "output_tokens": 7}


def _cut(ev: dict[str, object], at: bytes) -> bytes:
    stream = b"event: x\ndata: " + json.dumps(ev).encode() + b"\n\n"
    return stream[stream.index(at) :]  # (the tail starts inside the event, its start gone)


@pytest.mark.parametrize("key", ["item", "part", "delta", "\\u0069tem"])
def test_a_usage_in_an_object_held_by_another_key_is_not_taken(key: str) -> None:
    ev = {"type": "response.output_item.done", "pad": "z" * 50, key: {"text": "y" * 400, "usage": _USAGE}}
    assert usage_from(ev) is None
    tail = _cut(ev, b'"pad"').replace(b'"\\\\u0069tem"', b'"\\u0069tem"')
    assert last_usage(tail) is None, tail[:80]


def test_a_later_object_held_by_another_key_is_not_taken() -> None:
    ev = {"response": {"text": "y" * 400, "status": "done"}, "item": {"usage": _USAGE}, "type": "x"}
    assert usage_from(ev) is None
    assert last_usage(_cut(ev, b'"text"')) is None


@pytest.mark.parametrize("key", ["response", "message"])
def test_a_usage_in_the_response_or_message_object_is_taken(key: str) -> None:
    ev = {"type": "response.completed", "pad": "z" * 50, key: {"text": "y" * 400, "usage": _USAGE}}
    for at in (b'"pad"', b'"text"'):  # (its key kept; its key cut off)
        usage = last_usage(_cut(ev, at))
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 7), at


def test_a_later_response_object_whole_in_the_tail_is_taken() -> None:
    ev = {"item": {"text": "y" * 400}, "response": {"status": "completed", "usage": _USAGE}, "type": "x"}
    usage = last_usage(_cut(ev, b'"text"'))
    assert usage is not None and usage.completion_tokens == 7


def test_where_the_cut_dropped_the_holding_key_the_usage_one_level_down_is_taken() -> None:
    """The limit: the review's event with its ``item`` key cut off reads as a long ``response.completed``
    whose ``response`` key the cut dropped; both are taken (the tail shows nothing to tell them apart)."""
    ev = {"type": "response.output_item.done", "item": {"type": "x", "text": "y" * 400, "usage": _USAGE}}
    assert last_usage(_cut(ev, b'"text"')) is not None
