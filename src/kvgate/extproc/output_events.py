"""A stream's output counted from its events, for the latency model when no ``usage`` comes.

``kvgate serve`` adds ``stream_options.include_usage`` to every stream (and strips the chunk), so it
always learns decode time (TPOT, the Director's per-endpoint pace, the mean decode length) from
``usage.completion_tokens``. ``kvgate epp`` does not change the request, and a client that does not ask
for the usage chunk (the OpenAI SDK's default) gets none: the EPP then counts the stream's output
events instead (review s23-qa F1). vLLM writes one chunk per choice per engine step
(``stream_interval`` 1, its default), so each chat / completions event with a choice, from the first
output on, is one token; a server that groups tokens into fewer events is undercounted (its decode
learned slower than it is). Typed streams (Responses, Anthropic) end with their usage: not counted.

Events are the SSE spec's (``openai.sse``: a blank line ends one, its ``data`` lines joined by
``joined_data``), a choice event one whose data holds ``"choices": [{`` with any JSON whitespace
(small33: pretty-printed streams, and an event over several lines, were missed by a per-line count).
"""

from __future__ import annotations

import re

import orjson

from kvgate.openai.sse import (
    CHOICE_CHUNK,
    MAX_SSE_LINE,
    SSEScanner,
    event_end,
    has_output,
    joined_data,
    next_event_end,
    split_events,
)
from kvgate.scheduling.types import Usage

# A choice event's data: a ``choices`` array whose first element is an object, any JSON whitespace
# (a key inside a string is escaped, ``\\"choices\\"``: never matched).
_CHOICE = re.compile(rb'"choices"\s*:\s*\[\s*\{')
_KEY = b'"choices"'
# Past the first output, the most of an incomplete event kept: a choice event's ``choices`` key comes
# near its start (vLLM: after ``id``, ``object``, ``created``, ``model``), not past a 64 KiB head.
_HEAD = 64 << 10


def _is_choice(event: bytes | bytearray) -> bool:
    data = joined_data(event)
    return data is not None and _CHOICE.search(data) is not None


def choice_events(region: bytes | bytearray) -> int:
    """The choice events among ``region``'s complete events (it ends at an event's end). One ``data``
    line an event (vLLM's, SGLang's: no LF run of one within the region, so each event's data is its
    line): counted over the bytes, a few ``bytes.count``; else event by event (``joined_data``)."""
    if b"\r" not in region:
        simple = region.count(b"\n") == 2 * region.count(b"\n\n")
    else:  # (CRLF throughout: the same test on CRLF units)
        crlf = region.count(b"\r\n")
        simple = crlf == region.count(b"\r") == region.count(b"\n") and crlf == 2 * region.count(b"\r\n\r\n")
    if simple:
        n = region.count(CHOICE_CHUNK[0]) + region.count(CHOICE_CHUNK[1])
        if n == region.count(_KEY):
            return n  # (every ``choices`` key a compact choice array: the usual chunk)
        return len(_CHOICE.findall(region))  # (other spacing, or an empty one: the usage chunk)
    return sum(_is_choice(event) for event in split_events(region)[:-1])


class CountingScanner(SSEScanner):
    """``SSEScanner`` that also counts the output events: from the first event with output (the
    role-only opening chunk is none), each chat / completions event with a choice. Events are cut from
    the chunks as they come, the incomplete last one kept (bounded: ``MAX_SSE_LINE`` until the first
    output, ``_HEAD`` after it; an event past it is counted by its start, its rest skipped), and counted
    per chunk (``choice_events``: no Python step per event for the usual stream; review s23-rev-fixqa23
    R5) once the first output was found, event by event."""

    def __init__(self, rewrite_to: str | None = None) -> None:
        super().__init__(rewrite_to)
        self._events = 0
        # None: no output yet (read event by event); True: counting; False: a typed stream (none to count)
        self._counting: bool | None = None
        self._partial = bytearray()  # the last event's bytes so far (its end not seen)
        # Inside an event past the bound (already counted): skipped to its end; its last two bytes kept,
        # for an end cut across two chunks.
        self._skip = False
        self._edge = b""
        self._whole = False  # counting, and no event's bytes held nor skipped

    @property
    def output_events(self) -> int:
        return self._events

    def feed(self, chunk: bytes) -> bytes:
        out = SSEScanner.feed(self, chunk)
        if self._whole and chunk.count(b"\n") == 2 and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            # One whole one-line event (vLLM's, SGLang's chunk), nothing held: a choice event if that line
            # holds the compact choice array (``choice_events`` reads any other spelling).
            self._events += CHOICE_CHUNK[0] in chunk or choice_events(chunk)
        elif self._counting is not False:
            self._cut(chunk)
            # (counting, nothing held: the next whole event may take the path above)
            self._whole = self._counting is True and not self._partial and not self._skip
        return out

    def finish(self) -> bytes:
        out = super().finish()
        if self._partial and self._counting is not False:
            self._count(bytes(self._partial) + b"\n\n")  # (the last event, its blank line never came)
        self._partial = bytearray()
        return out

    def _cut(self, chunk: bytes) -> None:
        if self._skip:
            skipped = self._edge + chunk
            end = next_event_end(skipped)
            if end < 0:
                self._edge = skipped[-2:]
                return
            self._skip, self._edge = False, b""
            chunk = skipped[end:]
        partial = self._partial
        if partial:
            start = len(partial) - 1  # (an end found now takes at least one new byte)
            partial += chunk
            end = event_end(partial, start)
            if end:
                self._count(bytes(partial[:end]))
                del partial[:end]
        else:
            end = event_end(chunk)
            if end:
                self._count(chunk if end == len(chunk) else chunk[:end])
            if end < len(chunk):
                partial += memoryview(chunk)[end:]
        bound = MAX_SSE_LINE if self._counting is None else _HEAD
        if len(partial) > bound:  # counted by its start, the rest skipped to its end
            self._count(bytes(partial[:bound]) + b"\n\n")
            self._skip, self._edge = True, bytes(partial[-2:])
            partial.clear()

    def _count(self, region: bytes | bytearray) -> None:
        """``region``: complete events."""
        if self._counting:
            self._events += choice_events(region)
            return
        events = split_events(region)[:-1]
        for at, event in enumerate(events):
            data = joined_data(event)
            if data is None or data.lstrip()[:1] != b"{":
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if has_output(obj):
                # (a typed stream's first output starts no count: its events are no tokens)
                self._counting = _is_choice(event)
                if self._counting:
                    self._events = 1 + sum(_is_choice(e) for e in events[at + 1 :])
                return

    def learned_usage(self) -> Usage | None:
        """The stream's usage; without one, its output events as its completion tokens (None: none)."""
        if self.usage is not None:
            return self.usage
        n = self.output_events
        return Usage(completion_tokens=n) if n else None
