"""Session 17's closing note: a long Anthropic-shaped stream (``/v1/messages``) whose ``message_start``
left the 16 KiB usage tail, and whose last ``message_delta`` carries only ``output_tokens`` (Anthropic's
API does; vLLM's carries both), was charged 0 input tokens: the tail no longer held the input count.
Now the stream's start is kept too (its first few KiB, where ``message_start`` is), and read when the tail's
last usage has no input tokens. Each case at random chunkings of the same stream."""

from __future__ import annotations

import random

import orjson
import pytest

from kvgate.openai.usage import TAIL_BYTES, UsageTail
from kvgate.scheduling.types import Usage


def _event(e: dict) -> bytes:
    return b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"


def _stream(start_usage: dict, delta_usage: dict, text_bytes: int) -> bytes:
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
             "content": [], "model": "m", "usage": start_usage}}  # fmt: skip
    deltas = []
    n = 0
    while n < text_bytes:
        ev = _event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok " * 8}}
        )
        deltas.append(ev)
        n += len(ev)
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta_usage}
    return b"".join([_event(start), *deltas, _event(delta), _event({"type": "message_stop"})])


def _chunkings(body: bytes, rng: random.Random) -> list[list[bytes]]:
    out = [[body]]
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 60)))
        out.append([body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)])
    return out


def _usage(chunks: list[bytes]) -> Usage | None:
    tail = UsageTail()
    for c in chunks:
        tail.feed(c)
    return tail.usage()


@pytest.mark.parametrize("text_bytes", [100, TAIL_BYTES + 4096, 4 * TAIL_BYTES])
def test_a_long_message_stream_keeps_its_input_tokens(text_bytes: int) -> None:
    body = _stream({"input_tokens": 1234, "output_tokens": 1}, {"output_tokens": 500}, text_bytes)
    for chunks in _chunkings(body, random.Random(text_bytes)):
        assert _usage(chunks) == Usage(1234, 500, 0, False)


def test_a_long_message_stream_keeps_its_cached_input_tokens() -> None:
    start = {"input_tokens": 10, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 90}
    body = _stream(start, {"output_tokens": 5}, 4 * TAIL_BYTES)
    for chunks in _chunkings(body, random.Random(7)):
        assert _usage(chunks) == Usage(1000, 5, 900, True)


def test_a_last_delta_with_its_own_input_count_wins() -> None:
    """vLLM's ``message_delta`` carries both counts: it is read as it stands."""
    body = _stream(
        {"input_tokens": 1, "output_tokens": 1}, {"input_tokens": 77, "output_tokens": 5}, 4 * TAIL_BYTES
    )
    for chunks in _chunkings(body, random.Random(3)):
        assert _usage(chunks) == Usage(77, 5, 0, False)


def test_an_openai_stream_is_read_from_its_tail_alone() -> None:
    """No input count anywhere (a usage with completion tokens only): nothing is made up from the start."""
    first = b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":9,"completion_tokens":0}}\n\n'
    pad = b'data: {"choices":[{"text":"' + b"x" * 100 + b'"}]}\n\n'
    last = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\ndata: [DONE]\n\n'
    assert _usage([first, pad * 400, last]) == Usage(3, 4, 0, False)
