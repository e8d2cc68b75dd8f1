"""Review s17-doors F1: ``kvgate.openai.usage``'s event separator (``\\r?\\n\\r?\\n|\\r\\r``, 0bac76f) is not
the SSE rule the rest of the relay follows (``kvgate.openai.sse.event_end`` / ``next_event_end``): a blank
line that is a lone CR after an LF line end (``\\n\\r``) or after a CRLF line end (``\\r\\n\\r`` + the next
field) ends an event for EventEdge, the transformed relay and every WHATWG client, but not for the tail.
The usage event and ``[DONE]`` are then one piece whose JSON does not parse: the pass-through relay (and
``kvgate serve --clusters``, same tail) counts no tokens, while the transformed relay reads the same
stream's usage. Fixed: the tail splits with ``kvgate.openai.sse.split_events`` (one rule)."""

from __future__ import annotations

import orjson
import pytest

from kvgate.gateway.stream import StreamRelay
from kvgate.openai.sse import next_event_end
from kvgate.openai.usage import UsageTail
from kvgate.scheduling.types import Usage

TOKEN = {"id": "c", "object": "text_completion", "model": "m", "choices": [{"index": 0, "text": "a"}]}
USAGE = {"id": "c", "object": "text_completion", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 2}}  # fmt: skip


@pytest.mark.parametrize(
    ("line_end", "blank"),
    [(b"\n", b"\r"), (b"\r\n", b"\r")],
    ids=["lf-line-cr-blank", "crlf-line-cr-blank"],
)
def test_the_tail_reads_usage_at_every_event_end_the_relay_knows(line_end: bytes, blank: bytes) -> None:
    end = line_end + blank
    stream = b"".join(b"data: " + orjson.dumps(o) + end for o in (TOKEN, USAGE)) + b"data: [DONE]" + end
    # The SSE rule the relays follow: each of these is an event end.
    first = next_event_end(stream)
    assert first == len(b"data: " + orjson.dumps(TOKEN) + end)
    # The transformed relay reads the usage (and strips it) ...
    t = StreamRelay("served", "m", strip_usage=True)
    t.feed(stream)
    t.finish()
    assert t.usage == Usage(7, 2)
    # ... the usage tail (pass-through relay, kvgate serve --clusters) does not: fails on main (None).
    tail = UsageTail()
    tail.feed(stream)
    assert tail.usage() == Usage(7, 2)
    relay = StreamRelay(None, "m", strip_usage=False)
    assert relay.feed(stream) == stream
    relay.finish()
    assert relay.usage == Usage(7, 2)


# vLLM with ``stream_options.continuous_usage_stats`` puts a usage in every chunk: the LAST one counts.
EARLY = {**TOKEN, "usage": {"prompt_tokens": 7, "completion_tokens": 1}}


@pytest.mark.parametrize("end", [b"\n\r", b"\r\n\r"], ids=["lf-line-cr-blank", "crlf-line-cr-blank"])
def test_the_tail_splits_at_a_lone_cr_blank_line(end: bytes) -> None:
    """Review s17-fixes-b L7: the test above also passes with the old separator (the unsplit
    usage+[DONE] piece is still read by the scanner fallback). Here only the split gives the right
    answer: unsplit, the two usage events are one piece and its FIRST usage (7, 1) is read."""
    stream = b"".join(b"data: " + orjson.dumps(o) + end for o in (EARLY, USAGE)) + b"data: [DONE]" + end
    tail = UsageTail()
    tail.feed(stream)
    assert tail.usage() == Usage(7, 2)
