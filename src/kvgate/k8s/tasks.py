"""Stopping a background task: cancel it, wait for it, and say if it had ended on an error of its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], what: str, log: logging.Logger) -> None:
    """Cancel ``task`` and wait until it ended. An exception it ended with on its own (a bug) is logged,
    not raised: the caller's stop goes on with the rest. The caller's own cancellation is not swallowed
    (``asyncio.wait`` raises it; ``await task`` inside ``suppress(CancelledError)`` would not)."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s had stopped: %r", what, exc, exc_info=exc)
