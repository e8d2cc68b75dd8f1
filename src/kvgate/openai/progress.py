"""Was a relayed answer still making progress when ``requestTimeoutSeconds`` cut it? (``kvgate serve``'s
proxy, and ``kvgate serve --clusters``'s relay for its ``limits.requestTimeoutSeconds``: one rule.)

A stream (or a non-streamed answer past ``whole_max``, relayed as it comes) cut by the gateway's own bound
is not charged to a server that was still making progress when it was cut (review s19-qa L6: a long
generation must not eject a healthy endpoint), and is charged to one that was not (a wedged engine: after
its first token, mid-way, behind keep-alives). Progress is counted honestly (closing-s19 "Gateway"):

- what counts: a stream's *data event* with a payload (``progress_events``): not an SSE comment (``:
  ping``), not an empty ``data:``, not a ping event (``event: ping``, or a ``{"type": "ping"}`` payload:
  Anthropic's keep-alive, which carries a data line), however they share a chunk with other events; a
  relayed JSON body's piece that holds more than whitespace;
- when it counts (``Progress``): all through the later half of the time the server held the request, no
  stretch of it longer than ``STEADY_FRACTION`` (an eighth) of that time without progress, the last
  stretch (from the last progress to the cut) included. Before, one data event after the first anywhere
  in the later half sufficed: a stream that sent two data events late then wedged, or a first token late
  then a trickle, was spared; a relayed body's any one late piece too.

A server whose first token came after more than an eighth of the later half had passed (a long queue
before it) is charged like a wedged one: for the time it held the request when it did not own the deadline
(``HealthTracker.timed_out``), else a failure.
"""

from __future__ import annotations

import math
import re

from kvgate.openai.sse import next_event_end

STEADY_FRACTION = 1 / 8
# A block (what the relay just wrote) is read for progress only in its first bytes: an event past them is
# a data event's or a giant comment's, decided by what they hold.
_SCAN = 4096
_NL = (10, 13)
# A field line's name and the first bytes of its value (a ping's payload is 16 bytes).
_FIELD = re.compile(rb"(?m)(?:^|(?<=\r))(data|event):[ \t]*([^\r\n]{0,32})")
_PING = re.compile(rb'\{\s*"type"\s*:\s*"ping"\s*\}\s*')


def _payload(block: bytes, at: int) -> bool:
    """The data line whose value starts at ``at`` (after ``data:``) holds more than spaces."""
    n = len(block)
    while at < n and block[at] in (32, 9):
        at += 1
    return at < n and block[at] not in _NL


def progress_events(block: bytes) -> bool:
    """Whole SSE events just relayed hold progress: a data event with a payload that is not a keep-alive
    (cheap for the usual token chunk: ``data: {...}`` with no ``ping`` in it)."""
    if not block:
        return False
    if b"ping" not in block:
        if block.startswith(b"data:") and _payload(block, 5):
            return True
        for sep in (b"\ndata:", b"\rdata:"):
            i = block.find(sep)
            if i >= 0 and _payload(block, i + 6):
                return True
        if b"data:" not in block:
            return False
    head = block[:_SCAN]
    pos = 0
    while pos < len(head):
        end = next_event_end(head, pos)
        event = head[pos:] if end < 0 else head[pos:end]
        pos = len(head) if end < 0 else end
        ping = data = False
        for m in _FIELD.finditer(event):
            value = m.group(2)
            if m.group(1) == b"event":
                ping = ping or value.strip() == b"ping"
            elif value.strip():
                whole = m.end(2) == len(event) or event[m.end(2)] in _NL
                data = data or not (whole and _PING.fullmatch(value))
        if data and not ping:
            return True
    return False


def progress_piece(piece: bytes) -> bool:
    """A relayed JSON body's piece holds progress: more than whitespace (a keep-alive of blanks is none)."""
    return bool(piece) and not piece.isspace()


class Progress:
    """When a relayed answer made progress (event-loop time), against its hold: from ``sent_at`` to
    ``due`` (the deadline; None: no bound, never steady)."""

    __slots__ = ("_due", "_gap", "_last", "_mid", "_span")

    def __init__(self, sent_at: float, due: float | None) -> None:
        self._due = due
        self._span = 0.0 if due is None else due - sent_at
        self._mid = math.inf if due is None else (sent_at + due) / 2
        self._last = -math.inf
        self._gap = 0.0  # the longest stretch of the later half without progress, so far

    def seen(self, at: float) -> None:
        """Progress at ``at``."""
        if at > self._mid:
            gap = at - max(self._last, self._mid)
            if gap > self._gap:
                self._gap = gap
        self._last = at

    def steady(self) -> bool:
        """Progress all through the later half of the hold, up to the cut at the deadline: no stretch
        without any longer than ``STEADY_FRACTION`` of the hold."""
        if self._due is None or self._span <= 0:
            return False
        last = self._due - max(self._last, self._mid)
        return max(self._gap, last) <= self._span * STEADY_FRACTION
