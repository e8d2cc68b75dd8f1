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
