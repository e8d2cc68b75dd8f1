"""OpenAI responses as a front door reads them: streamed events scanned incrementally, models put back.

A streamed reply is never held whole: an SSE event split across body chunks is reassembled from a
bounded tail. Used by ``kvgate epp`` (the built-in gateway's relay has its own, copy-free variant in
``kvgate.gateway.stream``, reading usage with the same ``usage_from``).
"""

from __future__ import annotations

from typing import Any

import orjson

from kvgate.openai.protocol import usage_from
from kvgate.scheduling.types import Usage

# An SSE line longer than this is not a usage-bearing event we can afford to buffer: drop it.
MAX_SSE_LINE = 1 << 20


def has_output(obj: Any) -> bool:
    """True when a streamed event carries generated text (the first one marks the first token)."""
    if not isinstance(obj, dict):
        return False
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
            return True
    return False


def rewrite_model(obj: Any, model: str) -> bool:
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = model
        return True
    return False


class SSEScanner:
    """Incremental ``text/event-stream`` reader: feeds complete ``data:`` lines, keeps a bounded tail.

    With ``rewrite_to`` set, ``feed`` returns the bytes to forward with each event's ``model`` put back
    to the name the client sent (complete lines only; the tail waits for the next chunk). Without it,
    ``feed`` returns the input untouched, so pass-through chunks are never delayed.
    """

    def __init__(self, rewrite_to: str | None = None) -> None:
        self.rewrite_to = rewrite_to
        self.usage: Usage | None = None
        self.saw_output = False
        self._tail = bytearray()
        self._skipping = False  # inside an over-long line we gave up on

    def feed(self, chunk: bytes) -> bytes:
        buf = self._tail + chunk if self._tail else bytearray(chunk)
        end = buf.rfind(b"\n")
        complete, rest = (bytes(buf[: end + 1]), buf[end + 1 :]) if end >= 0 else (b"", buf)
        out = bytearray()
        for line in complete.splitlines(keepends=True):
            if self._skipping:
                self._skipping = False
                out += line
                continue
            out += self._line(line)
        if len(rest) > MAX_SSE_LINE:
            # Forward the oversized partial line untouched and stop buffering it.
            out += rest
            rest = bytearray()
            self._skipping = True
        self._tail = rest
        return bytes(out) if self.rewrite_to is not None else chunk

    def finish(self) -> bytes:
        """End of stream: a last event without a trailing newline."""
        tail, self._tail = bytes(self._tail), bytearray()
        if not tail:
            return b""
        out = self._line(tail) if not self._skipping else tail
        return out if self.rewrite_to is not None else b""

    def _line(self, line: bytes) -> bytes:
        stripped = line.strip()
        if not stripped.startswith(b"data:"):
            return line
        data = stripped[5:].strip()
        if not data or data == b"[DONE]" or data[:1] != b"{":
            return line
        if self.rewrite_to is None and self.saw_output and b'"usage"' not in data:
            return line  # nothing left to learn from this event: skip the JSON parse
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return line
        usage = usage_from(obj)
        if usage is not None:
            self.usage = usage
        if not self.saw_output and has_output(obj):
            self.saw_output = True
        if self.rewrite_to is not None and rewrite_model(obj, self.rewrite_to):
            ending = line[len(line.rstrip(b"\r\n")) :]
            return b"data: " + orjson.dumps(obj) + ending
        return line


def event_end(buf: bytes) -> int:
    """Where the last complete SSE event in ``buf`` ends (just past its blank line; 0 if none does).
    Both ``\\n\\n`` and ``\\r\\n\\r\\n`` end an event."""
    i = buf.rfind(b"\n\n")
    j = buf.rfind(b"\r\n\r\n")
    return max(i + 2 if i >= 0 else 0, j + 4 if j >= 0 else 0)


def ends_done(events: bytes) -> bool:
    """True when ``events`` (whole events) ends with the ``data: [DONE]`` event."""
    t = events[-24:].rstrip(b"\r\n")
    return t.endswith(b"[DONE]") and t[:-6].rstrip(b" ").endswith(b"data:")


class EventEdge:
    """A pass-through event stream's chunks cut back to whole events: ``feed`` returns what may go to
    the client now (up to the last event's end; a chunk that ends an event, the usual case, is returned
    as it is, uncopied), the partial event after it waits for its end, ``rest()`` at the body's normal
    end. So what a client has is always whole events, and a relay that must end the stream early (the
    drain's deadline) can append an error event that parses, dropping the partial one (never written:
    it cannot be completed). ``done`` says the ``data: [DONE]`` event went out. A partial event past
    ``max_bytes`` raises ``ValueError`` (the upstream is not speaking SSE)."""

    __slots__ = ("_held", "_max", "done")

    def __init__(self, max_bytes: int = MAX_SSE_LINE) -> None:
        self._held = b""
        self._max = max_bytes
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self._held:
            chunk = self._held + chunk
            self._held = b""
        if not chunk.endswith(b"\n\n"):
            end = event_end(chunk)
            if len(chunk) - end > self._max:
                raise ValueError(f"an SSE event exceeded {self._max} bytes")
            if end < len(chunk):
                self._held = chunk[end:]
                chunk = chunk[:end]
        if chunk and ends_done(chunk):
            self.done = True
        return chunk

    def rest(self) -> bytes:
        """At the body's normal end: the partial event held (an upstream that ends without its blank
        line), as it came."""
        rest, self._held = self._held, b""
        return rest
