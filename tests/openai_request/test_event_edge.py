"""``kvgate.openai.sse.EventEdge``: a pass-through event stream cut back to whole events (fixdoors16,
review s16-doors M1/L4). The relays' behaviour at a drain cut is tested end to end in
``tests/gateway/test_drain_cut_races.py``; here the splitting rules."""

from __future__ import annotations

import pytest

from kvgate.openai.sse import EventEdge, ends_done, event_end

EV = b'data: {"choices":[{"text":"t"}]}\n\n'


def test_a_chunk_ending_an_event_goes_out_as_it_came() -> None:
    edge = EventEdge()
    chunk = EV + EV
    assert edge.feed(chunk) is chunk  # (the usual case: no copy)
    assert edge.rest() == b""


def test_a_partial_event_waits_for_its_end_and_rest_gives_it_at_a_normal_end() -> None:
    edge = EventEdge()
    assert edge.feed(EV + EV[:10]) == EV
    assert edge.feed(EV[10:20]) == b""
    assert edge.feed(EV[20:]) == EV[:20] + EV[20:]
    assert edge.feed(b"data: {") == b""
    assert edge.rest() == b"data: {"
    assert edge.rest() == b""


def test_an_event_end_split_across_chunks_and_crlf_events() -> None:
    edge = EventEdge()
    assert edge.feed(EV[:-1]) == b""
    assert edge.feed(b"\n") == EV
    crlf = b"data: {}\r\n\r\n"
    assert edge.feed(crlf + b"data: x\r\n") == crlf
    assert edge.feed(b"\r\n") == b"data: x\r\n\r\n"
    assert event_end(b"a\n\nb\r\n\r\nc") == len(b"a\n\nb\r\n\r\n")
    assert event_end(b"abc") == 0


def test_done_is_seen_only_as_the_last_whole_event() -> None:
    edge = EventEdge()
    edge.feed(EV + b"data: [DON")
    assert not edge.done
    edge.feed(b"E]\n\n")
    assert edge.done
    assert ends_done(b"data:[DONE]\r\n\r\n")
    assert not ends_done(b'data: {"text":"[DONE]"}\n\n')


def test_a_partial_event_past_the_bound_is_refused() -> None:
    edge = EventEdge(max_bytes=16)
    edge.feed(b"data: " + b"x" * 10)
    with pytest.raises(ValueError):
        edge.feed(b"x" * 10)
