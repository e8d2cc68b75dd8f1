"""Response-side work: rewrite ``model`` back, read ``usage``, strip a usage chunk the gateway added.

Streams are relayed chunk by chunk, whole events only: complete events go out at once and only an
incomplete trailing event waits for its end, so a relay that ends a stream early (the drain's deadline)
appends its error event to whole events. Untransformed, an event past ``max_event_bytes`` is not
refused: it goes out as it comes (``mid_event`` until its end; a cut then closes the connection, no
event appended). Transformed, such an event raises ``StreamTooLarge``. When nothing needs
changing, a chunk that ends an event goes out as it arrived (``kvgate.openai.sse.EventEdge``) and only
a bounded tail is kept to find the final usage event. When something must change, events are
rewritten as they complete.
"""

from __future__ import annotations

import orjson

from kvgate.openai.protocol import usage_from
from kvgate.openai.sse import EventEdge, ends_done
from kvgate.openai.usage import UsageTail, event_obj
from kvgate.scheduling.types import Usage


class StreamTooLarge(Exception):
    """One SSE event grew past the bound: the upstream is not speaking SSE as expected."""


def _model_patterns(sent: str, client: str) -> list[tuple[bytes, bytes]]:
    s, c = orjson.dumps(sent), orjson.dumps(client)
    # Compact (vLLM, SGLang, orjson) and json.dumps-style spacing.
    return [(b'"model":' + s, b'"model":' + c), (b'"model": ' + s, b'"model": ' + c)]


def _usage_of(event: bytes) -> Usage | None:
    return usage_from(event_obj(event))


class BodyRewriter:
    """Non-streaming bodies: one pass over the whole body."""

    __slots__ = ("_patterns",)

    def __init__(self, sent_model: str | None, client_model: str) -> None:
        self._patterns = _model_patterns(sent_model, client_model) if sent_model else []

    def rewrite(self, body: bytes) -> bytes:
        for old, new in self._patterns:
            body = body.replace(old, new, 1)
        return body


class StreamRelay:
    def __init__(
        self, sent_model: str | None, client_model: str, strip_usage: bool, max_event_bytes: int = 1024 * 1024
    ) -> None:
        self._patterns = _model_patterns(sent_model, client_model) if sent_model else []
        self._strip = strip_usage
        self._transform = bool(self._patterns) or strip_usage
        self._buf = b""
        self._max = max_event_bytes
        self._sep = b"\n\n"
        # Untransformed: only a bounded tail is kept (the usage event is last), shared with
        # ``kvgate serve --clusters`` (``kvgate.openai.usage``).
        self._tail = None if self._transform else UsageTail()
        self._edge = None if self._transform else EventEdge(max_event_bytes)
        self.usage: Usage | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """The ``data: [DONE]`` event went out: the stream is complete, whatever comes (or not) after."""
        return self._edge.done if self._edge is not None else self._done

    @property
    def mid_event(self) -> bool:
        """Part of an event went out without its end (the pass-through relay's event past
        ``max_event_bytes``, flushed as it came): a cut now must not append an event to it."""
        return self._edge is not None and self._edge.mid_event

    def feed(self, chunk: bytes) -> bytes:
        if self._tail is not None and self._edge is not None:
            self._tail.feed(chunk)
            return self._edge.feed(chunk)
        buf = self._buf + chunk if self._buf else chunk
        if self._sep == b"\n\n" and b"\r\n\r\n" in buf:
            self._sep = b"\r\n\r\n"
        cut = buf.rfind(self._sep)
        if cut < 0:
            if len(buf) > self._max:
                raise StreamTooLarge(f"an SSE event exceeded {self._max} bytes")
            self._buf = buf
            return b""
        end = cut + len(self._sep)
        self._buf = buf[end:]
        out = self._process(buf[:end])
        if out and ends_done(out):
            self._done = True
        return out

    def _process(self, events: bytes) -> bytes:
        if self._strip and b'"usage"' in events:
            kept = []
            for ev in events.split(self._sep):
                if not ev:
                    continue
                if b'"usage"' in ev and b"[DONE]" not in ev:
                    obj = event_obj(ev)  # parsed once for both questions
                    usage = usage_from(obj)
                    if usage is not None:
                        self.usage = usage
                        # The include_usage chunk has an empty choices list; token chunks never do.
                        if obj.get("choices") == []:
                            continue
                kept.append(ev + self._sep)
            events = b"".join(kept)
        elif b'"usage"' in events:
            for ev in events.split(self._sep):
                usage = _usage_of(ev) if b'"usage"' in ev else None
                if usage is not None:
                    self.usage = usage
        for old, new in self._patterns:
            events = events.replace(old, new)
        return events

    def finish(self) -> bytes:
        """At end of stream: the leftover (an event without its blank line), and usage from the tail."""
        if self._tail is not None and self._edge is not None:
            tail, self._tail = self._tail, UsageTail()
            usage = tail.usage()
            if usage is not None:
                self.usage = usage
            return self._edge.rest()
        rest, self._buf = self._buf, b""
        return self._process(rest) if rest.strip() else rest
