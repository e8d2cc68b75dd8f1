"""One byte budget shared by many streams: per-stream caps alone let a few large streams together reach
gigabytes of RSS, so every buffer that holds a body also takes its bytes from a process-wide limit."""

from __future__ import annotations


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
    take may overdraw it (the read already happened); the debt is paid back before the next reader is let
    on. Time is passed in (the event loop's clock)."""

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

    def take(self, n: int, now: float) -> bool:
        """``n`` bytes were read: False when that leaves the bucket in debt (the reader should wait)."""
        self._refill(now)
        self.tokens -= n
        return self.tokens >= 0

    def due(self, now: float) -> float:
        """Seconds from ``now`` until the debt is paid (0: not in debt)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
