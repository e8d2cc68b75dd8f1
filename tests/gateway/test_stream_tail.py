"""The relayed stream's usage tail (``kvgate.openai.usage.UsageTail``), one for ``kvgate serve``'s
untransformed relay (``StreamRelay``) and ``kvgate serve --clusters``: it reads the last usage event within
the stream's last ``TAIL_BYTES``, however the stream was chunked, and trims its buffer only when it passes
twice that (review s13-metrics L3, I1)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.gateway.stream import StreamRelay
from kvgate.openai import usage as usage_mod
from kvgate.openai.usage import TAIL_BYTES, UsageTail, last_usage
from kvgate.scheduling.types import Usage

TOKEN = b'data: {"choices": [{"index": 0, "text": "abc"}]}\n\n'
DONE = b"data: [DONE]\n\n"


def _usage_event(prompt: int, completion: int, pad: int = 0) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    doc = {"choices": [], "pad": "x" * pad, "usage": usage}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _tail_usage(stream: bytes, size: int) -> Usage | None:
    tail = UsageTail()
    for i in range(0, len(stream), size):
        tail.feed(stream[i : i + size])
    return tail.usage()


def _relay_usage(stream: bytes, size: int) -> Usage | None:
    relay = StreamRelay(None, "m", strip_usage=False)  # nothing to change: the pass-through tail
    out = b"".join(relay.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    assert out == stream  # relayed as it came
    assert relay.finish() == b""
    return relay.usage


def test_both_relays_read_through_the_one_shared_last_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """L3: ``StreamRelay`` keeps no copy of the tail search (before: its own ``_TAIL_BYTES`` and loop)."""
    seen: list[bytes] = []

    def spy(tail: bytes | bytearray) -> Usage | None:
        seen.append(bytes(tail))
        return Usage(1, 2)

    monkeypatch.setattr(usage_mod, "last_usage", spy)
    stream = TOKEN + _usage_event(7, 3) + DONE
    assert _relay_usage(stream, 5) == Usage(1, 2)
    assert _tail_usage(stream, 5) == Usage(1, 2)
    assert seen == [stream, stream]


def test_the_tail_is_trimmed_only_past_twice_its_size() -> None:
    """I1: a small chunk is appended in place (before: the whole 16 KiB tail copied twice per chunk);
    the buffer is cut back to ``TAIL_BYTES`` once it passes ``2 * TAIL_BYTES``."""
    tail = UsageTail()
    buf = tail._tail
    lengths = []
    for _ in range(3 * TAIL_BYTES // len(TOKEN)):
        tail.feed(TOKEN)
        assert tail._tail is buf
        lengths.append(len(buf))
    assert max(lengths) <= 2 * TAIL_BYTES
    assert max(lengths) > TAIL_BYTES + len(TOKEN)
    assert min(lengths[len(lengths) // 2 :]) == TAIL_BYTES  # trimmed back at least once
    tail.feed(b"y" * (TAIL_BYTES + 5))  # a big chunk alone fills it
    assert bytes(tail._tail) == b"y" * TAIL_BYTES


SIZES = [1, 7, 97, 1000, TAIL_BYTES - 1, TAIL_BYTES, TAIL_BYTES + 1, 40_000, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_a_usage_event_split_across_chunks_is_found(size: int) -> None:
    stream = TOKEN * 3000 + _usage_event(7, 3, pad=2000) + DONE
    assert _tail_usage(stream, size) == Usage(7, 3)
    assert _relay_usage(stream, size) == Usage(7, 3)


def test_only_the_last_tail_bytes_are_read() -> None:
    """As before: a usage event that ends more than ``TAIL_BYTES`` before the stream's end is not
    found, even when the buffer still holds it, nor is one cut at the tail's start inside its usage.
    One cut before its ``usage`` key is read (s17-qafix-d F2: a Responses stream's ``response.completed``
    holds the whole answer before its usage; before, any event straddling the tail's start was
    skipped)."""
    far = _usage_event(7, 3) + TOKEN * (TAIL_BYTES // len(TOKEN) + 1) + DONE
    event = _usage_event(7, 3, pad=100)
    key = event.index(b'"usage"')
    straddle_value = event + b"z" * (TAIL_BYTES - len(event) + key + 3) + b"\n\n"
    straddle_before = event + b"z" * (TAIL_BYTES - len(event) + key - 20) + b"\n\n"
    for size in (len(TOKEN), 1000):
        for stream in (far, straddle_value):
            assert _tail_usage(stream, size) is None
            assert _relay_usage(stream, size) is None
        assert _tail_usage(straddle_before, size) == Usage(7, 3)
        assert _relay_usage(straddle_before, size) == Usage(7, 3)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(
        st.one_of(
            st.just(TOKEN),
            st.builds(_usage_event, st.integers(1, 99), st.integers(1, 99), st.integers(0, 6000)),
            st.just(b"data: {broken\n\n"),
        ),
        max_size=40,
    ),
    sizes=st.lists(st.integers(1, 3 * TAIL_BYTES), min_size=1, max_size=5),
)
def test_the_tail_reads_what_the_streams_last_tail_bytes_hold(events: list[bytes], sizes: list[int]) -> None:
    """However chunked, the answer is ``last_usage`` of the stream's last ``TAIL_BYTES`` (what the old
    copy-per-chunk tail held)."""
    stream = b"".join(events) + DONE
    want = last_usage(stream[-TAIL_BYTES:])
    for size in sizes:
        assert _tail_usage(stream, size) == want
        assert _relay_usage(stream, size) == want
