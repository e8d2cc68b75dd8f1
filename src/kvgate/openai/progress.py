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

A server whose first token came after more than an eighth of the hold had passed into its later half (a
long queue before it) is charged like a wedged one: for the time it held the request when it did not own
the deadline (``HealthTracker.timed_out``), else a failure.

Progress is judged on what the server offered, not on how fast the client read it: time the relay spent
waiting on the client (its write held by the client's back-pressure: the upstream is not read meanwhile,
so nothing it sent can be seen) is no stretch without progress (``Progress.waiting``/``resumed``, told
by the front's writer: ``httpfront.server.StreamResponse.waits``). Review s20-gw M2: before, a client
that read late got a steady server charged, and ejected at the third such cut.
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

    __slots__ = ("_due", "_gap", "_last", "_mid", "_span", "_wait_from", "_waited")

    def __init__(self, sent_at: float, due: float | None) -> None:
        self._due = due
        self._span = 0.0 if due is None else due - sent_at
        self._mid = math.inf if due is None else (sent_at + due) / 2
        self._last = -math.inf
        self._gap = 0.0  # the longest stretch of the later half without progress, so far
        self._waited = 0.0  # the time of the later half spent waiting on the client since the last progress
        self._wait_from: float | None = None  # waiting on the client since then

    def seen(self, at: float) -> None:
        """Progress at ``at``."""
        if at > self._mid:
            gap = at - max(self._last, self._mid) - self._waited
            if gap > self._gap:
                self._gap = gap
        self._last = at
        self._waited = 0.0

    def waiting(self, at: float) -> None:
        """The relay began waiting on the client at ``at`` (a write held by its back-pressure)."""
        self._wait_from = at

    def resumed(self, at: float) -> None:
        """The client took what the relay waited on (``waiting``) at ``at``: the wait is no gap."""
        if self._wait_from is not None:
            self._waited += max(0.0, at - max(self._wait_from, self._mid))
            self._wait_from = None

    def steady(self) -> bool:
        """Progress all through the later half of the hold, up to the cut at the deadline: no stretch
        without any longer than ``STEADY_FRACTION`` of the hold (time spent waiting on the client, a
        wait still going on at the cut included, is none)."""
        if self._due is None or self._span <= 0:
            return False
        waited = self._waited
        if self._wait_from is not None:
            waited += max(0.0, self._due - max(self._wait_from, self._mid))
        last = self._due - max(self._last, self._mid) - waited
        return max(self._gap, last) <= self._span * STEADY_FRACTION
