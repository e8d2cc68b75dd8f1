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

A client's share (gw25, session-24 closing note): the waiting bodies hold the front's body budget, which is
the process's, so one client queueing many big bodies could fill it, and every other client's body got
the budget's 503 until those parses ended. ``off_loop``'s ``share`` and ``limit`` (the budget's) bound
the bytes of the bodies listed or on the thread, only under pressure (review s25-rev-gw25 F2: enforced
always, it refused honest clients behind one NAT, or all of an EPP's clients without a fairness id, with
most of the budget free): while those bytes, this body's included, are at most half of ``limit``,
nothing is refused; past half, a body is refused at once (``ShareFull``: 429 with an OpenAI error body,
``Retry-After``; its bytes given back with its answer) if it would take its client past ``share`` (its
first body passes), or all clients' together past three quarters of ``limit``; a body with nothing else
waiting is never refused (review s25-rev-fixgw25 F1, F3).
That last bound is the one a client minting keys cannot get around (an EPP's fairness ids are the
client's to choose, an IPv6 host has many addresses: review s25-rev-gw25 F3): whatever the keys, the
bodies waiting for the thread never hold more than three quarters of ``limit`` (whatever the share; the
rest stays for the bodies parsed on the loop and the answers held); the per-client share bounds a client
only as long as it keeps one key. A ``share`` of ``limit`` or more turns both off.

The GIL: the thread's Python hands the loop its turn every switch interval (5 ms), but one C call
(orjson's decode of the whole body, a regex pass over it) holds it to its end; the loop's stall is that
call's, not the whole parse's.
"""

from __future__ import annotations

import asyncio
import functools
import os
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

# (``ShareFull``, this module's refusal, is defined beside its base ``BodyError``: a compiled class
# refuses a subclass defined in an interpreted module such as this one; ``make compiled``)
from kvgate.openai.request import ShareFull as ShareFull
from kvgate.openai.request import more_than

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
_UNITS = b'",{['  # (found by ``more_than`` up to CHEAP_UNITS + 1: counting walked the body 4 times)

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
    return more_than(body, _UNITS, CHEAP_UNITS)


def waiting_share(per_client: int, limit: int) -> int:
    """A client's share of the body budget ``limit`` for its bodies waiting to be parsed
    (``limits.maxWaitingBytesPerClient``, ``per_client``; 0: a quarter of ``limit``): ``kvgate serve``'s
    config and ``serve --clusters``' clusters file alike."""
    return per_client or limit // 4


class _Wait:
    """One body waiting for the thread; ``fn`` and ``body`` dropped when it is handed over or cancelled
    (``size`` stays: its client's share counts it until it is cancelled or parsed)."""

    __slots__ = ("body", "client", "fn", "future", "size")

    def __init__(
        self, fn: Callable[[Any], Any], body: bytes | bytearray, future: asyncio.Future[Any], client: Hashable
    ) -> None:
        self.fn: Callable[[Any], Any] | None = fn
        self.body: bytes | bytearray | None = body
        self.future = future
        self.client = client
        self.size = len(body)


class _Client:
    """A client's listed waits (in arrival order, cancelled ones included until reached), how many of
    them are live, and the bytes of its live ones and of its body on the thread (``held``)."""

    __slots__ = ("held", "live", "waits")

    def __init__(self) -> None:
        self.waits: deque[_Wait] = deque()
        self.live = 0
        self.held = 0


class _Lane:
    """A loop's waiting list for the parse thread, with at most one of its bodies on the thread (or in the
    executor's queue) at a time. Called on its loop only.

    Clients take turns (``client``: the peer's address, or the EPP's fairness id), round-robin, a body a
    turn: the clients with bodies listed form a ring; the thread takes the next body of the client at its
    head; a client goes to the ring's tail when it comes with a body and has none listed or on the thread,
    and when its body on the thread is done and it has more listed (not when the body is taken: the body on
    the thread is its turn, so a client that comes meanwhile goes first). So a body with ``k`` bodies of its
    own client listed ahead of it is parsed after the one on the thread and at most ``k + 1`` bodies of each
    other client, however many that client queued: a client's first listed body waits for at most one of
    each other client (listed before it, unless its client's previous body is on the thread). In one list
    in arrival order it waited for all of them (session-23 closing note;
    ``tests/gateway/test_parse_lane_per_client_gw24.py``, ``tests/gateway/test_parse_lane_bound_fixgw24.py``).
    A client with several ids is several clients; a new id goes to the tail, behind every client listed
    (start-time tags let a fresh id per body go ahead of another client's next body for ever: review
    s24-rev-gw24 F2).

    Only the clients with a live body listed, and the one on the thread, are kept: a client whose waits
    were all cancelled leaves the ring and comes back at its tail (review s24-rev-gw24 F1), whatever the
    number of clients that come and go (an EPP's fairness ids are the clients' to choose)."""

    def __init__(self) -> None:
        self.ring: OrderedDict[Hashable, _Client] = OrderedDict()  # (clients with a live body listed)
        self.current: tuple[Hashable, _Client] | None = None  # (the client whose body is on the thread)
        self.listed = 0  # (waits in the clients' lists, cancelled ones included)
        self.busy = False
        self.dead = 0  # (waits cancelled still listed)
        self.held = 0  # (the bytes of every client's live listed bodies and of the one on the thread)

    def __len__(self) -> int:
        return self.listed

    def _client(self, key: Hashable) -> _Client | None:
        if self.current is not None and self.current[0] == key:
            return self.current[1]
        return self.ring.get(key)

    def _drop(self, client: _Client) -> None:
        """``client`` has no live body listed: its list holds only cancelled waits."""
        self.listed -= len(client.waits)
        self.dead -= len(client.waits)
        client.waits.clear()

    def cancelled(self, wait: _Wait) -> None:
        """A listed wait was cancelled (its ``fn`` and ``body`` already dropped): a client with no live body
        left leaves the ring; a cancelled wait of one that stays is dropped at its turn, or sooner, once
        cancelled waits outnumber live ones (behind a slow parse, clients who leave would pile them up:
        review s23-rev-fix23c F2), so the lists stay within twice the live waits."""
        client = self._client(wait.client)
        assert client is not None
        client.live -= 1
        client.held -= wait.size
        self.held -= wait.size
        self.dead += 1
        if not client.live:
            self._drop(client)
            if self.current is None or self.current[1] is not client:
                del self.ring[wait.client]
        if self.dead > 64 and 2 * self.dead > self.listed:
            for c in [*self.ring.values(), *([self.current[1]] if self.current else [])]:
                c.waits = deque(w for w in c.waits if w.fn is not None)
            self.listed -= self.dead
            self.dead = 0

    def push(self, wait: _Wait) -> None:
        client = self._client(wait.client)
        if client is None:
            client = self.ring[wait.client] = _Client()
        client.waits.append(wait)
        client.live += 1
        client.held += wait.size
        self.held += wait.size
        self.listed += 1
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while self.ring:
            key, client = self.ring.popitem(last=False)
            wait = client.waits.popleft()
            self.listed -= 1
            while wait.fn is None:  # (cancelled: its body is already dropped; the entry is what is left)
                self.dead -= 1
                wait = client.waits.popleft()  # (a client in the ring has a live one)
                self.listed -= 1
            client.live -= 1
            fn, body = wait.fn, wait.body
            wait.fn = wait.body = None
            if body is None or wait.future.done():  # (not by ``off_loop``'s cancel: nothing to parse for)
                client.held -= wait.size
                self.held -= wait.size
                if client.live:
                    self.ring[key] = client
                    self.ring.move_to_end(key, last=False)  # (its turn still)
                else:
                    self._drop(client)
                continue
            try:
                done = asyncio.get_running_loop().run_in_executor(_thread(), fn, body)
            except Exception as e:  # (no thread: this request fails, the next tries again)
                # (a hand-off that raised left nothing in flight: ``busy`` stays False, or every later big
                # body would wait for ever; review s23-rev-fix23c F1)
                wait.future.set_exception(e)
                client.held -= wait.size
                self.held -= wait.size
                if client.live:
                    self.ring[key] = client
                else:
                    self._drop(client)
                continue
            self.busy = True
            self.current = (key, client)
            done.add_done_callback(functools.partial(self._finished, wait))
            return

    def _finished(self, wait: _Wait, done: asyncio.Future[Any]) -> None:
        self.busy = False
        if self.current is not None:
            key, client = self.current
            self.current = None
            client.held -= wait.size  # (parsed: its body is no longer waiting)
            self.held -= wait.size
            if client.live:
                self.ring[key] = client  # (its next body after those of the clients listed meanwhile)
            else:
                self._drop(client)  # (cancelled waits listed after the body taken)
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


async def off_loop(
    fn: Callable[[B], T],
    body: B,
    client: Hashable = None,
    share: int | None = None,
    limit: int = 0,
    keyed: bool = True,
) -> T:
    """``fn(body)`` on the process's parse thread (in ``client``'s turn, after its bodies queued before
    it); what it raises is raised here. ``share`` and ``limit`` (the body budget's): ``ShareFull`` at once
    if other bodies are listed or on the thread, these and this one hold more than half of ``limit``, and
    this one would take ``client``'s past ``share`` (a client's first body passes) or all clients' past
    three quarters of ``limit`` (None, or a share of ``limit`` or more: no bound). ``keyed`` False:
    ``client`` is no one client's key (an EPP's requests without a fairness id), bound by the clients'
    total alone."""
    loop = asyncio.get_running_loop()
    lane = _lanes.get(loop)
    if lane is None:
        lane = _lanes[loop] = _Lane()
    if share is not None and share < limit:
        size = len(body)
        # Under pressure only (below half, nothing is refused), and never a body alone: with nothing else
        # waiting it takes no one's room (review s25-rev-fixgw25 F1: one body over half the budget got
        # 429 at every retry). The clients' total keeps a quarter of ``limit`` free whatever the share
        # (F3: ``limit - share`` made a bigger share refuse more); a client's first body passes its share
        # (only the total bounds a client minting keys: review s25-rev-gw25 F3).
        if lane.held and lane.held + size > limit // 2:
            cap = limit - limit // 4
            if lane.held + size > cap:
                raise ShareFull(lane.held, size, cap, everyone=True)
            mine = lane._client(client) if keyed else None
            held = mine.held if mine is not None else 0
            if held and held + size > share:
                raise ShareFull(held, size, share)
    wait = _Wait(fn, body, loop.create_future(), client)
    del body  # (the wait holds the only reference here: a cancel below drops it)
    lane.push(wait)
    try:
        result: T = await wait.future
    except asyncio.CancelledError:
        if wait.fn is not None:  # (not handed over yet: drop the body now, not at the thread's turn)
            wait.fn = wait.body = None
            lane.cancelled(wait)
        raise
    return result
