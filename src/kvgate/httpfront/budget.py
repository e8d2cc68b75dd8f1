"""One byte budget shared by many streams: per-stream caps alone let a few large streams together reach
gigabytes of RSS, so every buffer that holds a body also takes its bytes from a process-wide limit."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ByteBudget:
    """Bytes held by all streams together, against one limit. Not thread-safe: one event loop's."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing taken) when that would pass the limit."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class ReadPace:
    """Bytes per second for reads that serve no request (a refused request's linger), all connections
    of one front (a listening port) together: a token bucket (``burst`` bytes, refilled at ``rate``). A
    lingering read may overdraw it (the read already happened); the debt is paid back before the next
    reader is let on, and it has a floor (one bucket): churn cannot pile up seconds of it. A read before
    the linger (the bytes that came with or behind a refused request) takes what is left but makes no
    debt: a new connection's first read cannot be paced (the kernel hands it over with the request), and
    its debt would starve the lingerers waiting their turn (review s22-gw F1). Time is passed in (the
    event loop's clock)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now if self.stamp is None else max(self.stamp, now)

    def take(self, n: int, now: float, owe: bool = True) -> bool:
        """``n`` bytes were read: False when they did not fit (the reader should wait). ``owe``: what did
        not fit is debt (down to ``-burst``); otherwise the bucket is only emptied (a debt stays as it is)."""
        self._refill(now)
        left = self.tokens - n
        self.tokens = max(left, -self.burst) if owe else max(left, min(self.tokens, 0.0))
        return left >= 0

    def due(self, now: float) -> float:
        """Seconds from ``now`` until the debt is paid (0: not in debt)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class TurnQueue(Generic[T]):
    """Waiters taken in turns: smallest key first (equal keys in arrival order), and every other turn the
    one that waited longest, so no waiter waits for ever behind smaller keys that keep coming: one with W
    waiters before it (in arrival order) has its turn within 2(W + 1) (review s23-rev-gw23 F2: strict
    order starved the largest keys under a flood that re-queues). O(log n) in and out, and any one leaves in
    O(1) (its entries stay, skipped when reached; both lists are rebuilt once such entries outnumber the
    waiters: bounded under churn, review s22-gw F2). ``len``: the waiters."""

    __slots__ = ("_arrival", "_heap", "_live", "_oldest_next", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._arrival: deque[tuple[int, T]] = deque()  # (seq, waiter), oldest first
        self._live: dict[T, int] = {}  # waiter -> the sequence number of its entries
        self._seq = 0
        self._oldest_next = False  # the next turn is the longest waiting one's

    def __len__(self) -> int:
        return len(self._live)

    def push(self, item: T, key: float) -> None:
        self._seq += 1
        self._live[item] = self._seq
        heapq.heappush(self._heap, (key, self._seq, item))
        self._arrival.append((self._seq, item))

    def pop(self) -> T:
        """The next waiter: by turns, the one with the smallest key and the one that waited longest
        (``IndexError`` when none waits)."""
        oldest, self._oldest_next = self._oldest_next, not self._oldest_next
        live = self._live
        while True:
            if oldest:
                seq, item = self._arrival.popleft()
            else:
                _, seq, item = heapq.heappop(self._heap)
            if live.get(item) == seq:
                del live[item]
                self._compact()  # (its entry in the other list is stale now)
                return item

    def discard(self, item: T) -> None:
        if self._live.pop(item, None) is not None:
            self._compact()

    def _compact(self) -> None:
        live, bound = self._live, 2 * len(self._live) + 64
        if len(self._heap) > bound:
            self._heap = [e for e in self._heap if live.get(e[2]) == e[1]]
            heapq.heapify(self._heap)
        if len(self._arrival) > bound:
            self._arrival = deque(e for e in self._arrival if live.get(e[1]) == e[0])

    def clear(self) -> None:
        self._heap.clear()
        self._arrival.clear()
        self._live.clear()
