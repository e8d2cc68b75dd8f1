"""``kvgate.openai.sse.EventEdge``: a pass-through event stream cut back to whole events (fixdoors16,
review s16-doors M1/L4). The relays' behaviour at a drain cut is tested end to end in
``tests/gateway/test_drain_cut_races.py``; here the splitting rules."""

from __future__ import annotations

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


def test_a_partial_event_past_the_bound_goes_out_as_it_comes_and_mid_event_says_so() -> None:
    """fixedge16, review s16-fixes-a #1: an event past the bound is flushed, not refused (before:
    ValueError), the rest of it passes through; ``mid_event`` until its end; memory stays bounded."""
    edge = EventEdge(max_bytes=16)
    assert edge.feed(b"data: " + b"x" * 10) == b""
    assert edge.feed(b"x" * 10) == b"data: " + b"x" * 20
    assert edge.mid_event and not edge._held
    assert edge.feed(b"yy") == b"yy"  # (passes through, nothing held)
    assert edge.mid_event
    assert edge.feed(b"\n") == b"\n"
    assert edge.feed(b"\ndata: z") == b"\n"  # the blank line across the border ends it
    assert not edge.mid_event
    assert edge.feed(b"\n\n") == b"data: z\n\n"


def test_cr_line_ends_end_events_and_crlf_is_kept_whole() -> None:
    """Review s16-fixes-a #3: lines end with CRLF, LF or a lone CR (WHATWG); an empty line ends an
    event (before, ``\r\r`` was held to the stream's end)."""
    edge = EventEdge()
    ev = b"data: a\r\r"
    assert edge.feed(ev + b"data: b") == ev
    assert edge.feed(b"\r\r") == b"data: b\r\r"
    assert event_end(b"data: a\r\n\r\n") == 11  # the LF after the closing CR taken with it
    assert event_end(b"a\n\r\nb") == 4
    assert edge.feed(b"data: [DONE]\r\r") == b"data: [DONE]\r\r"
    assert edge.done


def test_a_comment_line_goes_out_at_its_end_when_no_event_line_is_held() -> None:
    """Review s16-fixes-a #3: a keepalive comment without its blank line (``: ping\n``) belongs to no
    event, so it goes out at its line end (before: held until the next event); after an event's first
    line it waits with it."""
    edge = EventEdge()
    assert edge.feed(b": ping\n") == b": ping\n"
    assert edge.feed(b": pi") == b""
    assert edge.feed(b"ng\r\n: x\rdata: {") == b": ping\r\n: x\r"
    assert edge.feed(b"}\n: in the event\n") == b""
    assert edge.feed(b"\n") == b"data: {}\n: in the event\n\n"


def test_an_event_in_many_pieces_is_scanned_once_with_its_end_split_on_the_border() -> None:
    """Review s16-fixes-a #2: only the new bytes (and the border) are scanned; ``\r\n\r\n`` split
    at every place still ends the event."""
    ev = b"data: " + b"x" * 100 + b"\r\n\r\n"
    for cut in range(1, len(ev)):
        edge = EventEdge()
        assert edge.feed(ev[:cut]) + edge.feed(ev[cut:]) == ev, cut
        assert edge.rest() == b""
    edge = EventEdge()
    out = b"".join(edge.feed(ev[i : i + 3]) for i in range(0, len(ev), 3))
    assert out == ev and edge.rest() == b""
