"""``kvgate serve``'s handle on a request flow control may preempt (``Director.preemptible``).

Until its answer's head goes out, a stop cancels the request's handler and its client gets the 429. A
typed stream (Responses API, Anthropic Messages) stays preemptible past that, until its first output event
(``response.created`` / ``message_start`` come before the prefill): its 200 and that event have reached the
client, so a 429 can no longer be sent. The stop then aborts the upstream request instead, and the relay
ends the client's stream with the API's error event and a clean end (review s23-qa F7: the cancelled relay
left the client's connection open with no end).
"""

from __future__ import annotations

import asyncio

from kvgate.gateway.upstream import UpstreamResponse


class Stop:
    """``stop()`` for the director: True when it stopped the request, False when it no longer can."""

    __slots__ = ("ended", "hit", "stream", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.hit = False  # stopped (by flow control, for a more important request)
        self.stream: UpstreamResponse | None = None  # set as the relay starts: the head is going out
        self.ended = False  # the relay is past its last read: too late to stop

    def relaying(self, stream: UpstreamResponse) -> None:
        self.stream = stream

    def __call__(self) -> bool:
        if self.hit or self.ended or self.task.done():
            return False
        stream = self.stream
        if stream is None:
            self.hit = True
            self.task.cancel()
            return True
        if stream.received:  # (its whole answer is here: the relay ends it as usual)
            return False
        self.hit = True
        stream.close()  # the relay's read ends; it sends the error event (``proxy._relay_stream``)
        return True
