"""Work on a request body too big to do on the event loop: one worker thread per process, clients in turn.

Why: a body's parse (``kvgate.openai.request.parse_body``: decode, checks, rendering, estimate) is Python
that runs ~0.2-2 s on a hostile 8 MiB body (``scripts/hostile_body_cost.py``); on the loop, every other
connection waited that long (``scripts/parse_stall.py``). A body of more than ``OFF_LOOP_BYTES`` is parsed
on a worker thread instead, in all three doors (``kvgate serve``, ``serve --clusters``, ``kvgate epp``); a
smaller one stays on the loop, where its parse costs less than the hop, and so does one up to 1 MiB of few
strings and containers (``worth_the_thread``: a long prompt, a few ms) that would otherwise wait behind slow
parses (docs/hardening.md, "Big bodies' parse off the event loop").

Bounds: one thread, so one parse at a time, as on the loop (the memory of parses in progress is that of
one). The bodies waiting for it wait on the loop (``_Lane``), not in the executor's queue: the thread gets
one body at a time, so a wait cancelled (the client left) drops its body at once, and the waiting bodies
are those of requests in flight, which the front's body budget (``maxBufferedBytes``) and
``maxConcurrentRequests`` count. (Handed to the executor, a body whose client left stayed referenced by
its work item until the thread reached it, counted by no budget: review s23-rev-gw23 F1.) A parse started
runs to its end (a thread cannot be stopped), its result dropped.

The GIL: the thread's Python hands the loop its turn every switch interval (5 ms), but one C call
(orjson's decode of the whole body, a regex pass over it) holds it to its end; the loop's stall is that
call's, not the whole parse's.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import os
import weakref
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
B = TypeVar("B", bytes, bytearray)

# Bodies longer than this are parsed off the loop. A hop to the thread and back costs ~0.1 ms of loop
# time; a 64 KiB chat body's parse about as much, a hostile one's ~15 ms (8 MiB: 2 s, scaled).
OFF_LOOP_BYTES = 64 << 10

# A body over OFF_LOOP_BYTES but at most this long, whose JSON has at most CHEAP_UNITS quotes, commas and
# containers, is still parsed on the loop: its strings are decoded in C, so the count and the parse cost
# ~2.5-5 ms (``scripts/cheap_body_cost.py``: 1 MiB of escapes, of non-ASCII text, at the cap; a crafted one of
# ``]`` or ``\\`` with 65 ``[]`` pairs 7-9 ms: review s23-rev-fix23c F3), less
# than a hostile 64 KiB body's parse there, and an honest long prompt waits behind no slow parse on the
# thread (review s23-rev-gw23 F3). Longer bodies are not counted (8 MiB: 10-20 ms of counting alone).
CHEAP_BYTES = 1 << 20
CHEAP_UNITS = 1024
_UNITS = (b'"', b",", b"{", b"[")

# (the process's id with its executor: a forked child makes its own, its parent's thread is not in it)
_executor: tuple[int, ThreadPoolExecutor] | None = None


def _thread() -> ThreadPoolExecutor:
    global _executor
    pid = os.getpid()
    if _executor is None or _executor[0] != pid:
        _executor = (pid, ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvgate-parse"))
    return _executor[1]


def worth_the_thread(body: bytes | bytearray) -> bool:
    """Whether ``body``'s parse goes to the thread: over ``OFF_LOOP_BYTES``, unless it is at most
    ``CHEAP_BYTES`` and has at most ``CHEAP_UNITS`` quotes, commas and containers."""
    if len(body) <= OFF_LOOP_BYTES:
        return False
    if len(body) > CHEAP_BYTES:
        return True
    units = 0
    for unit in _UNITS:
        units += body.count(unit)
        if units > CHEAP_UNITS:
            return True
    return False


class _Wait:
    """One body waiting for the thread; ``fn`` and ``body`` dropped when it is handed over or cancelled."""

    __slots__ = ("body", "fn", "future")

    def __init__(
        self, fn: Callable[[Any], Any], body: bytes | bytearray, future: asyncio.Future[Any]
    ) -> None:
        self.fn: Callable[[Any], Any] | None = fn
        self.body: bytes | bytearray | None = body
        self.future = future


class _Lane:
    """A loop's waiting list for the parse thread, with at most one of its bodies on the thread (or in the
    executor's queue) at a time. Called on its loop only.

    Clients take turns (``client``: the peer's address, or the EPP's fairness id), by start-time fair
    queuing with a cost of one per body: a body's tag is its client's previous tag plus one, or the tag of
    the body on the thread if that is later (a client with none waiting starts at the current turn), and
    the thread takes the lowest tag (the first come among equal ones). So a client's first waiting body
    waits for at most the one on the thread and one of each other client with bodies waiting, however many
    one client queued (its next ones: a round of the others' each); in one list in arrival order it waited
    for all of them (session-23 closing note; ``tests/gateway/test_parse_lane_per_client_gw24.py``)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[int, int, Hashable, _Wait]] = []  # (a heap: tag, arrival number, client)
        self.tags: dict[Hashable, int] = {}  # client -> the tag after its last body's
        self.turn = 0  # the tag of the body taken last
        self.serving: Hashable = None  # and its client
        self.arrivals = 0
        self.busy = False
        self.dead = 0  # (entries of cancelled waits still listed)

    def __len__(self) -> int:
        return len(self.waiting)

    def cancelled(self) -> None:
        """A listed wait was cancelled: its entry is dropped at its turn, or sooner, once dead entries
        outnumber live ones (behind a slow parse, clients who leave would pile them up: review s23-rev-fix23c
        F2), so the list stays within twice the live waits."""
        self.dead += 1
        if self.dead > 64 and 2 * self.dead > len(self.waiting):
            self.waiting = [e for e in self.waiting if e[3].fn is not None and not e[3].future.done()]
            heapq.heapify(self.waiting)
            self.dead = 0

    def push(self, client: Hashable, wait: _Wait) -> None:
        tags = self.tags
        tag = max(self.turn, tags.get(client, 0))
        tags[client] = tag + 1
        self.arrivals += 1
        heapq.heappush(self.waiting, (tag, self.arrivals, client, wait))
        if len(tags) > 2 * len(self.waiting) + 64:
            # Only the clients with a body listed or on the thread are kept (one whose waits were all
            # cancelled starts at the turn again): at most the live waits and one, whatever the number of
            # clients that come and go (an EPP's fairness ids are the clients' to choose). Amortized: the
            # next pass is as many new clients away.
            keep = {e[2] for e in self.waiting}
            keep.add(self.serving)
            self.tags = {c: t for c, t in tags.items() if c in keep}
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while self.waiting:
            self.turn, _, self.serving, wait = heapq.heappop(self.waiting)
            fn, body = wait.fn, wait.body
            if fn is None or body is None or wait.future.done():
                if self.dead:
                    self.dead -= 1
                continue  # (cancelled: its body is already dropped; the entry is what is left)
            wait.fn = wait.body = None
            try:
                done = asyncio.get_running_loop().run_in_executor(_thread(), fn, body)
            except Exception as e:  # (no thread: this request fails, the next tries again)
                # (a hand-off that raised left nothing in flight: ``busy`` stays False, or every later big
                # body would wait for ever; review s23-rev-fix23c F1)
                wait.future.set_exception(e)
                continue
            self.busy = True
            done.add_done_callback(functools.partial(self._finished, wait))
            return

    def _finished(self, wait: _Wait, done: asyncio.Future[Any]) -> None:
        self.busy = False
        if done.cancelled():
            wait.future.cancel()
        else:
            exc = done.exception()  # (read even when dropped: no "never retrieved" log)
            if not wait.future.done():  # (else the client left while it ran: its result is dropped)
                if exc is not None:
                    wait.future.set_exception(exc)
                else:
                    wait.future.set_result(done.result())
        self._next()


# (a lane per running loop: the thread is the process's, the waiting list the loop's; a lane holds no
# reference to its loop, so a closed loop's entry goes with it)
_lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane] = weakref.WeakKeyDictionary()


async def off_loop(fn: Callable[[B], T], body: B, client: Hashable = None) -> T:
    """``fn(body)`` on the process's parse thread (in ``client``'s turn, after its bodies queued before
    it); what it raises is raised here."""
    loop = asyncio.get_running_loop()
    lane = _lanes.get(loop)
    if lane is None:
        lane = _lanes[loop] = _Lane()
    wait = _Wait(fn, body, loop.create_future())
    del body  # (the wait holds the only reference here: a cancel below drops it)
    lane.push(client, wait)
    try:
        result: T = await wait.future
    except asyncio.CancelledError:
        if wait.fn is not None:  # (not handed over yet: drop the body now, not at the thread's turn)
            wait.fn = wait.body = None
            lane.cancelled()
        raise
    return result
