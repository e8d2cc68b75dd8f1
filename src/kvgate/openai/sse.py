"""OpenAI responses as a front door reads them: streamed events scanned incrementally, models put back.

A streamed reply is never held whole: an SSE event split across body chunks is reassembled from a
bounded tail. Used by ``kvgate epp`` (the built-in gateway's relay has its own, copy-free variant in
``kvgate.gateway.stream``, reading usage with the same ``usage_from``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from kvgate.openai.protocol import later_usage, usage_from
from kvgate.scheduling.types import Usage

# An SSE line longer than this is not a usage-bearing event we can afford to buffer: drop it.
MAX_SSE_LINE = 1 << 20
# A stream's bytes held before its first data event at most (SSE comments only: bounded).
FIRST_HELD_MAX = 65536


def first_event_held(held: bytes) -> bool:
    """Whether a stream's first bytes ``held`` reach its first data event, or ``FIRST_HELD_MAX``: the
    held head's rule of both gateway doors (``kvgate serve``'s proxy, ``serve --clusters``'s router).
    SSE comments before it (``: ping`` keep-alives, from a server or a proxy) are no progress, so a
    stream that ends or fails after them is still retried (review s30-qa30 Q4, Q8)."""
    # (a line may end with a lone CR: the SSE spec's third line end, qa34a F4)
    return held.startswith(b"data:") or b"\ndata:" in held or b"\rdata:" in held or len(held) > FIRST_HELD_MAX


# Typed events (Responses API, Anthropic Messages) that carry no generated output: a Responses stream's
# opening (vLLM yields ``response.created`` and ``response.in_progress`` before it reads the engine's
# first output, so before the prefill; ``response.queued``: a background response), Anthropic's
# ``message_start`` (Anthropic's own API sends it before the model runs) and ``ping``, and errors
# (``error``, ``response.failed``: they say nothing about the prefill).
_NO_OUTPUT_TYPES = frozenset((
    "response.created", "response.in_progress", "response.queued", "response.failed", "error",
    "message_start", "ping",
))  # fmt: skip


def has_output(obj: Any) -> bool:
    """True when a streamed event carries generated output: its first marks the first token.

    Completions: a choice's ``text``. Chat: a choice's ``delta`` with anything but its ``role``
    (``content``, ``reasoning`` / ``reasoning_content``, ``tool_calls``, ``refusal``...) or a
    ``finish_reason``; the role-only opening chunk is none (vLLM and SGLang send it with the first
    token, but a server may send it at once: ``kvgate sim`` does), nor a usage-only chunk. A typed
    event (Responses API, Anthropic Messages): any but ``_NO_OUTPUT_TYPES`` (``response.output_item.added``,
    ``response.output_text.delta``, ``content_block_start`` / ``_delta``... come once tokens do)."""
    if type(obj) is not dict:
        return False
    choices = obj.get("choices")
    if choices is None:
        kind = obj.get("type")  # (vLLM's older error event has one too: ``"object": "error"``)
        return type(kind) is str and kind not in _NO_OUTPUT_TYPES and obj.get("object") != "error"
    for choice in choices if type(choices) is list else ():
        if type(choice) is not dict:
            continue
        if choice.get("text") or choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if type(delta) is dict:
            for key, value in delta.items():
                if value and key != "role":
                    return True
    return False


def rewrite_model(obj: Any, model: str) -> bool:
    """Put ``model`` (the name the client sent) in a reply or a stream event: its top-level ``model``, or
    the nested one of a Responses API stream's ``response.created`` / ``response.in_progress`` /
    ``response.completed`` (``response.model``) and of an Anthropic stream's ``message_start``
    (``message.model``), as ``kvgate serve`` does (it replaces the model's bytes wherever they are).
    True when something was put back (the event is then re-encoded)."""
    if not isinstance(obj, dict):
        return False
    if "model" in obj:
        obj["model"] = model
        return True
    inner = obj.get("response")  # (unrolled: this runs for every event of a rewritten stream)
    if inner is None:
        inner = obj.get("message")
    if type(inner) is dict and "model" in inner:
        inner["model"] = model
        return True
    return False


def line_end(buf: bytes | bytearray) -> int:
    """The index just past ``buf``'s last complete line (0: none): lines end with LF, CRLF or a lone CR (the
    SSE spec). A CR at the end ends its line; an LF that follows in the next chunk is that CRLF's
    (``LineEnds``). The CR is looked for past the last LF only (none there in the usual LF stream)."""
    end = buf.rfind(b"\n")
    return max(end, buf.rfind(b"\r", end + 1)) + 1


class LineEnds:
    """Counts a stream's SSE line ends chunk by chunk: LF, a lone CR, and CRLF once, also when its CR ends
    one chunk and its LF opens the next (the count a line-for-line reader makes of ``line_end``'s lines)."""

    __slots__ = ("_cr",)

    def __init__(self) -> None:
        self._cr = False  # the last chunk ended with a CR

    def count(self, data: bytes | bytearray) -> int:
        if not data:  # (an empty chunk between a CR and its LF changes nothing)
            return 0
        n = data.count(b"\n")
        if crs := data.count(b"\r"):
            n += crs - data.count(b"\r\n")
        if self._cr and data[0] == 10:  # (10: LF, the second byte of the last chunk's CRLF)
            n -= 1
        self._cr = data[-1] == 13  # (13: CR)
        return n


# A chunk with at least one choice (the usage-only chunk's list is empty), as vLLM / orjson / pydantic
# write it, and as Python's json module does. Never inside a JSON string (its quotes are escaped there).
CHOICE_CHUNK = (b'"choices":[{', b'"choices": [{')


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
        # The next line is not a line to scan alone: the rest of an over-long line we gave up on, or a
        # line of a held event (one check a line for both, ``_aside``).
        self._skipping = False
        # An event whose JSON spans several ``data:`` lines (its first one failed to decode): its lines
        # as they came, held to its blank line, then its data read as the SSE spec joins them. None: none.
        self._event: bytearray | None = None
        # The last chunk ended with a CR, its line ended there: an LF opening the next is that CRLF's.
        self._cr = False

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        body: bytes = chunk
        if self._cr and chunk:  # (an empty chunk between the CR and its LF changes nothing: rev-c34 F3)
            self._cr = False
            if chunk[:1] == b"\n":
                # Where its CR went (a held event's line, or out), never an empty line of its own: that
                # would end a held event early.
                if self._event is not None:
                    self._event += b"\n"
                else:
                    out += b"\n"
                body = chunk[1:]
        buf = self._tail + body if self._tail else bytearray(body)
        # Lines end with LF, CRLF or a lone CR (the SSE spec; qa34a F4: a CR-only stream was held whole,
        # unread): ``line_end``, the relays' rule too.
        end = line_end(buf)
        if end and buf[end - 1] == 13:  # (13: CR)
            self._cr = end == len(buf)
        complete, rest = (bytes(buf[:end]), buf[end:]) if end else (b"", buf)
        for line in complete.splitlines(keepends=True):
            if self._skipping:
                out += self._aside(line)
                continue
            out += self._line(line)
        if len(rest) > MAX_SSE_LINE:
            # Forward the oversized partial line untouched and stop buffering it (a held event's lines
            # first, unread).
            if self._event is not None:
                out += self._event
                self._event = None
            out += rest
            rest = bytearray()
            self._skipping = True
        self._tail = rest
        return bytes(out) if self.rewrite_to is not None else chunk

    def finish(self) -> bytes:
        """End of stream: a last event without a trailing newline."""
        tail, self._tail = bytes(self._tail), bytearray()
        self._cr = False
        out = (self._line(tail) if not self._skipping else self._aside(tail)) if tail else b""
        if self._event is not None:  # (a held event the stream ended without its blank line)
            out += self._event_end(b"")
        return out if self.rewrite_to is not None else b""

    def _line(self, line: bytes) -> bytes:
        stripped = line.strip()
        if not stripped.startswith(b"data:"):
            return line
        data = stripped[5:].strip()
        if not data or data == b"[DONE]" or data[:1] != b"{":
            return line
        if self.rewrite_to is None and self.saw_output and b'"usage"' not in data and data[-1] == 125:
            # Nothing left to learn from this event: skip the JSON parse. (125: ``}``. A first data line of
            # several does not end its object: it is held, its ``usage`` may come on a later line.)
            return line
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            # Perhaps the first of several data lines (qa32a Q7's case, read by ``kvgate serve`` too):
            # held to the event's end. One-line events never come here.
            self._event = bytearray(line)
            self._skipping = True
            return b""
        return self._read(obj, line)

    def _read(self, obj: Any, line: bytes) -> bytes:
        usage = usage_from(obj)
        if usage is not None:
            self.usage = later_usage(self.usage, usage)
        if not self.saw_output and has_output(obj):
            self.saw_output = True
        if self.rewrite_to is not None and rewrite_model(obj, self.rewrite_to):
            ending = line[len(line.rstrip(b"\r\n")) :]
            return b"data: " + orjson.dumps(obj) + ending
        return line

    def _aside(self, line: bytes) -> bytes:
        """A line not scanned alone: the rest of an over-long line (out as it came), or a held event's
        line, held until its blank line ends it (bounded: past ``MAX_SSE_LINE`` the held lines go out as
        they came and the event is not read)."""
        event = self._event
        if event is None:
            self._skipping = False
            return line
        if not line.strip():
            return self._event_end(line)
        event += line
        if len(event) > MAX_SSE_LINE:
            self._event = None
            self._skipping = False
            return bytes(event)
        return b""

    def _event_end(self, blank: bytes) -> bytes:
        """A held event ended by ``blank``: its data read as ``kvgate.openai.usage.event_obj`` reads it
        (its ``data`` lines joined by newlines), its model put back; out as it came if nothing was."""
        event, self._event = bytes(self._event or b""), None
        self._skipping = False
        data = joined_data(event)
        try:
            obj = orjson.loads(data or b"")
        except orjson.JSONDecodeError:
            return event + blank
        lines = event.splitlines(keepends=True)
        ending = lines[-1][len(lines[-1].rstrip(b"\r\n")) :] or b"\n"
        joined = b"data:" + ending  # (``_read`` takes its line end; returned as it is: nothing put back)
        out = self._read(obj, joined)
        if out is joined:
            return event + blank  # nothing put back: the event's bytes as they came
        fields = b"".join(x for x in lines if not x.startswith(b"data:"))
        return fields + out + blank


def joined_data(event: bytes | bytearray) -> bytes | None:
    """An event's data: each ``data`` line's value (after the colon, one leading space dropped) joined by
    newlines, as the SSE spec (and the openai SDK's decoder) reads them, the other fields and comments
    left out; None when it has no ``data`` line (a whole body). ``kvgate.openai.usage.event_obj`` and
    ``SSEScanner`` read a multi-line event by it."""
    lines = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in bytes(event).splitlines()
        if line.startswith(b"data:") or line == b"data"
    ]
    return b"\n".join(lines) if lines else None


def event_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Where the last complete SSE event in ``buf`` ends (just past its blank line; 0 if none does),
    looking only at blank lines ending at or after ``start + 2``. SSE lines end with CRLF, LF or a lone
    CR (WHATWG) and an event ends at an empty line, so ``\\n\\n``, ``\\n\\r`` (``\\r\\n\\r\\n``'s middle)
    and ``\\r\\r`` end one; an LF right after the closing CR (its CRLF) is taken with it."""
    end = max(buf.rfind(b"\n\n", start), buf.rfind(b"\n\r", start), buf.rfind(b"\r\r", start))
    if end < 0:
        return 0
    end += 2
    if buf[end - 1] == 13 and buf[end : end + 1] == b"\n":
        end += 1
    return end


# An SSE event's end (the blank line after a CRLF, LF or lone CR line end: ``\n\n``, ``\n\r``, ``\r\r``,
# an LF right after the closing CR taken with it). The single definition ``next_event_end`` and
# ``split_events`` search with (leftmost match: the first end at or after a position, one pass).
_EVENT_END = re.compile(rb"\n\n|[\n\r]\r\n?")


def next_event_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Where the first complete SSE event at or after ``start`` ends (just past its blank line; -1 if
    none does): the same rule as ``event_end`` (a blank line after a CRLF, LF or lone CR line end; an LF
    right after the closing CR taken with it), the first one instead of the last. Scans only up to that
    end (``_EVENT_END``)."""
    m = _EVENT_END.search(buf, start)
    return -1 if m is None else m.end()


def event_ends(buf: bytes | bytearray) -> list[int]:
    """Where each complete SSE event in ``buf`` ends, in order (``next_event_end``'s rule): one pass."""
    return [m.end() for m in _EVENT_END.finditer(buf)]


def split_events(buf: bytes | bytearray) -> list[bytes | bytearray]:
    """``buf`` cut at every SSE event end (``next_event_end``'s rule, the one the relays follow): the
    events in order, each with its blank line, then what follows the last one (possibly empty)."""
    out: list[bytes | bytearray] = []
    at = 0
    for end in event_ends(buf):
        out.append(buf[at:end])
        at = end
    out.append(buf[at:])
    return out


def _comments_end(buf: bytes | bytearray, start: int) -> int:
    """Past the complete comment lines (``: ping``) at ``buf[start:]``'s start: they belong to no event,
    so they may go out while no event's line is held."""
    while buf[start : start + 1] == b":":
        n, r = buf.find(b"\n", start), buf.find(b"\r", start)
        end = min(n, r) if n >= 0 and r >= 0 else max(n, r)
        if end < 0:
            break
        start = end + 1
        if buf[end] == 13 and buf[start : start + 1] == b"\n":
            start += 1
    return start


# How a chunk of whole events may end when its last event is ``data: [DONE]``: the line end after ``]``
# (LF, CRLF, CR), then the blank line (LF, CR, CRLF; a CR whose LF is still to come ends it already).
# ``ends_done`` is asked only then (a cheap ``endswith`` first).
DONE_ENDS = (
    b"]\n\n", b"]\n\r", b"]\n\r\n", b"]\r\n\n", b"]\r\n\r", b"]\r\n\r\n", b"]\r\r", b"]\r\r\n",
)  # fmt: skip


def ends_done(events: bytes) -> bool:
    """True when ``events`` (whole events) ends with the ``data: [DONE]`` event."""
    t = events[-24:].rstrip(b"\r\n")
    return t.endswith(b"[DONE]") and t[:-6].rstrip(b" ").endswith(b"data:")


# The events a typed stream (Responses API, Anthropic Messages: no ``[DONE]``) ends with, named by their
# ``event:`` line or, a server that writes none (data-only), by their JSON's top-level ``"type"``; how whole
# events may end (the blank line's forms, as ``DONE_ENDS``').
TYPED_LAST = frozenset({b"message_stop", b"response.completed", b"response.incomplete", b"response.failed"})
_EVENTS_END = (b"\n\n", b"\n\r", b"\r\r", b"\n\r\n", b"\r\r\n")
_LAST_TYPES = frozenset(n.decode() for n in TYPED_LAST)
# A data line's JSON whose top-level ``"type"`` names a last event: its first member (OpenAI's, Anthropic's
# order) or its last (pydantic's field order: vLLM's ``ResponseCompletedEvent`` writes ``response`` first).
# The last member is looked for in the line's last ``TYPE_TAIL`` bytes only: the one before the closing
# brace at the line's end is top-level (inside a string a quote is escaped, ``\"type\"`` matches neither).
_NAMES = rb"(?:message_stop|response\.completed|response\.incomplete|response\.failed)"
_TYPE_FIRST = re.compile(rb'[ \t]*\{\s*"type"\s*:\s*"' + _NAMES + rb'"')
_TYPE_LAST = re.compile(rb'"type"\s*:\s*"' + _NAMES + rb'"\s*\}[ \t]*$')
TYPE_TAIL = 96
# A last event's data this short is read whole (parsed: its top-level ``"type"`` exactly, members in any
# order) when a member anywhere names a last type (``_TYPE_ANY``: one search with a literal prefix, the
# guard before any parse; rev-b36 F2: a data-only stream's every delta paid ~8 us, now about one search).
_TYPE_PARSED = 4096
_TYPE_ANY = re.compile(rb'"type"\s*:\s*"' + _NAMES + rb'"')


def _line_end(buf: bytes | bytearray, pos: int, stop: int) -> int:
    """The first line end (LF or CR) in ``buf[pos:stop]``, else ``stop`` (two single-byte searches:
    memchr, a data line holding a whole answer read at memory speed)."""
    lf, cr = buf.find(b"\n", pos, stop), buf.find(b"\r", pos, stop)
    return stop if lf < 0 and cr < 0 else (lf if cr < 0 or 0 <= lf < cr else cr)


def _ends_with_last_type(buf: bytes, start: int, stop: int) -> bool:
    """A data line's JSON (``buf[start:stop]``) whose last member is a last event's ``"type"``: looked for
    in its last ``TYPE_TAIL`` bytes, only when it ends with a brace."""
    while stop > start and buf[stop - 1] in (32, 9):
        stop -= 1
    return (
        stop > start
        and buf[stop - 1] == 125
        and _TYPE_LAST.search(buf, max(start, stop - TYPE_TAIL), stop) is not None
    )


def _last_event_lines(events: bytes, n: int) -> tuple[int, int, int, int, int, int]:
    """The last event of ``events[:n]`` (``n``: its last line's end), its lines walked back from the end
    (single-byte ``rfind``: memrchr; only that event's lines are read, however long the chunk):
    ``(name, name_end, first, first_end, last, last_end)``, where its last ``event:`` line and its first
    and last ``data`` lines start and end (-1: none)."""
    name = name_end = first = first_end = last = last_end = -1
    end = n
    while True:
        lf = events.rfind(b"\n", 0, end)
        cr = events.rfind(b"\r", lf + 1, end)
        start = (cr if cr > lf else lf) + 1
        if start == end:  # an empty line: the event before this one ends here
            break
        if events.startswith(b"data", start) and (end - start == 4 or events[start + 4] == 58):
            if last < 0:
                last, last_end = start, end
            first, first_end = start, end
        elif name < 0 and events.startswith(b"event:", start):
            name, name_end = start, end
        if start == 0:
            break
        end = start - 1  # (past the line end before it: LF, CR or CRLF)
        if events[end] == 10 and end and events[end - 1] == 13:
            end -= 1
    return name, name_end, first, first_end, last, last_end


def _data_names_last(events: bytes, first: int, first_end: int, last: int, last_end: int, n: int) -> bool:
    """Whether the last event's data (its ``data`` lines, ``first`` to ``last``) is JSON whose top-level
    ``"type"`` names a last event. An event under ``_TYPE_PARSED``: its data parsed (the lines joined as SSE
    joins them: a continuation line's ``{"type"`` is not top-level, rev-b36 F1), only when a member names
    one (``_TYPE_ANY``). A longer one: its first data line's first member or its last data line's last
    member (bounded looks, whatever its size; a JSON string holds no line end, so both are top-level)."""
    if n - first > _TYPE_PARSED:
        return _TYPE_FIRST.match(events, first + 5, first_end) is not None or _ends_with_last_type(
            events, last + 5, last_end
        )
    if first == last:
        data = events[first + 5 : last_end] if _TYPE_ANY.search(events, first + 5, last_end) else None
    else:
        data = joined_data(events[first:last_end])
        data = data if data is not None and _TYPE_ANY.search(data) else None
    if data is None:
        return False
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return type(obj) is dict and obj.get("type") in _LAST_TYPES


def ends_typed(events: bytes) -> bool:
    """True when ``events`` (whole events) ends with a typed stream's last event (``TYPED_LAST``): named by
    the last event's ``event:`` line, or (none: a data-only server; small36, was False: rev-b35 F2) by its
    data's top-level ``"type"``. Only the last event's lines are read (walked back from the end)."""
    if not events.endswith(_EVENTS_END):
        return False
    n = len(events)
    while n and events[n - 1] in (10, 13):
        n -= 1
    name, name_end, first, first_end, last, last_end = _last_event_lines(events, n)
    if name >= 0:
        return events[name + 6 : name_end].strip(b" ") in TYPED_LAST
    return last >= 0 and _data_names_last(events, first, first_end, last, last_end, n)


def _head_names_last(head: bytes | bytearray) -> bool:
    """An event's first bytes (past ``max_bytes``: its end not seen) name a last event: an ``event:`` line
    among its first lines, or its first data line's JSON's first member."""
    pos, n = 0, len(head)
    while pos < n and head[pos] in (10, 13):
        pos += 1
    while pos < n:
        end = _line_end(head, pos, n)
        if head.startswith(b"event:", pos):
            return end < n and bytes(head[pos + 6 : end]).strip(b" ") in TYPED_LAST
        if head.startswith(b"data:", pos):
            return _TYPE_FIRST.match(head, pos + 5, end) is not None
        pos = end + (2 if head[end : end + 2] == b"\r\n" else 1)
    return False


def _tail_names_last(tail: bytes) -> bool:
    """An event's last bytes (its blank line stripped; ``TYPE_TAIL`` of them or more) name a last event:
    its last line an ``event:`` line naming one, else that line's JSON's last member."""
    start = max(tail.rfind(b"\n"), tail.rfind(b"\r")) + 1
    if start and tail.startswith(b"event:", start):
        return tail[start + 6 :].strip(b" ") in TYPED_LAST
    return _TYPE_LAST.search(tail, max(start, len(tail) - TYPE_TAIL)) is not None


class TypedEnd:
    """Whether a typed stream's last event went out (``done``), told by a relay as its events go: whole
    events (``events``), or an event past the relay's bound that goes out as it comes (``big_start``
    with its held head, ``big_piece`` per piece, ``big_end`` where it ends). Such an event is judged on
    its head (its ``event:`` line, or its JSON's first member) and its last ``TYPE_TAIL`` bytes (its JSON's
    last member): bounded memory, never the whole event held (small36)."""

    __slots__ = ("_head", "_tail", "done")

    def __init__(self) -> None:
        self.done = False
        self._head = False  # the big event's head names a last event
        self._tail = b""  # the big event's last bytes sent

    def events(self, out: bytes) -> None:
        if not self.done and out:
            self.done = ends_typed(out)

    def big_start(self, head: bytes | bytearray) -> None:
        """``head``: the event's bytes held when it passed the bound (its start)."""
        self._head = _head_names_last(head[:1024])
        self._tail = bytes(head[-TYPE_TAIL:])

    def big_piece(self, data: bytes) -> None:
        self._tail = (self._tail + data[-TYPE_TAIL:])[-TYPE_TAIL:]

    def big_end(self, out: bytes, end: int) -> None:
        """``out[:end]``: the big event's last bytes, its blank line included; ``out[end:]``: whole events."""
        if self.done:
            return
        if out[end:].strip(b"\r\n"):
            self.done = ends_typed(out[end:])
            return
        tail = (self._tail + out[max(0, end - TYPE_TAIL - 4) : end]).rstrip(b"\r\n")
        self.done = self._head or _tail_names_last(tail)
        self._tail = b""


class EventEdge:
    """A pass-through event stream's chunks cut back to whole events: ``feed`` returns what may go to
    the client now (up to the last event's end; a chunk that ends an event, the usual case, is returned
    as it is, uncopied), the partial event after it waits for its end, ``rest()`` at the body's normal
    end. So what a client has is whole events, and a relay that must end the stream early (the drain's
    deadline) can append an error event that parses, dropping the partial one (never written: it cannot
    be completed). Complete comment lines (``: ping``) with no event line held go out at once.

    A partial event past ``max_bytes`` (legit: completions ``echo`` + ``logprobs`` on a long prompt)
    is not refused: what is held goes out as it is and the rest of that event passes through as it
    comes (memory stays bounded); ``mid_event`` is then true until that event's end, and a relay cut
    while it is must not append an event (it would be glued onto the half event): it closes the
    connection instead. ``done`` says the ``data: [DONE]`` event went out (``typed``: or a typed stream's
    last event, ``TypedEnd``). Only the bytes that arrive are scanned for an event's end (no re-scan of
    what is held)."""

    __slots__ = ("_held", "_last", "_max", "_typed", "done", "mid_event")

    def __init__(self, max_bytes: int = MAX_SSE_LINE, typed: bool = False) -> None:
        self._held = bytearray()
        self._max = max_bytes
        self._last = b""  # mid-event: the last byte sent (a blank line may straddle the chunks)
        self._typed = TypedEnd() if typed else None
        self.done = False
        self.mid_event = False

    def _big_end(self, out: bytes) -> None:
        """The event past the bound ends in ``out`` (at its first event end, perhaps one that straddles
        the chunks)."""
        typed = self._typed
        if typed is None or typed.done:
            return
        border = event_end(self._last + out[:2])
        typed.big_end(out, border - 1 if border else next_event_end(out))
        self.done = typed.done

    def feed(self, chunk: bytes) -> bytes:
        held = self._held
        base: bytes | bytearray = chunk
        ended = False  # an event past the bound ended in this chunk
        if not held:
            if chunk.endswith(b"\n\n"):  # the usual case: whole events, returned uncopied
                if self.mid_event:
                    self.mid_event = False
                    self._big_end(chunk)
                elif self._typed is not None and not self.done:
                    self._typed.events(chunk)
                    self.done = self._typed.done
                if chunk.endswith((b"]\n\n", b"]\r\n\n")) and ends_done(chunk):
                    self.done = True
                return chunk
            end = event_end(chunk)
            if self.mid_event:
                if not end and chunk:  # a blank line across the border with what went out?
                    end = max(event_end(self._last + chunk[:2]) - 1, 0)
                if not end:  # still inside the big event: it passes through as it comes
                    if chunk:
                        self._last = chunk[-1:]
                        if self._typed is not None:
                            self._typed.big_piece(chunk)
                    return chunk
                self.mid_event = False
                ended = True
            elif not end and chunk[:1] in (b"\n", b"\r"):
                # Line ends right after an event's end (a CRLF's LF split off its CR, or an empty line):
                # no event's line, they go out.
                end = len(chunk) - len(chunk.lstrip(b"\r\n"))
        else:
            start = len(held)
            held += chunk
            base = held
            end = event_end(held, max(start - 2, 0))  # only the new bytes (and the border) scanned
        end = _comments_end(base, end)
        if end == len(base):
            out = chunk if base is chunk else bytes(held)
            held.clear()
        else:
            if base is chunk:
                out = chunk[:end]
                held += chunk[end:]
            else:
                out = bytes(held[:end])
                del held[:end]
            if len(held) > self._max:
                # Past the bound: what is held goes out as it is, the rest of the event as it comes.
                if self._typed is not None and not self.done:
                    if ended:  # (the last big event's end, and whole events, before this one)
                        self._big_end(out)
                    else:
                        self._typed.events(out)
                    self._typed.big_start(held)
                    self.done = self._typed.done
                out += held
                held.clear()
                self.mid_event = True
                self._last = out[-1:]
        if self._typed is not None and not self.done and not self.mid_event:
            if ended:
                self._big_end(out)
            else:
                self._typed.events(out)
                self.done = self._typed.done
        if out.endswith(DONE_ENDS) and ends_done(out):
            self.done = True
        return out

    def rest(self) -> bytes:
        """At the body's normal end: the partial event held (an upstream that ends without its blank
        line), as it came."""
        rest = bytes(self._held)
        self._held.clear()
        return rest
