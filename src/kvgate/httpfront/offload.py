"""Work on a request body too big to do on the event loop: one worker thread per process, in order.

Why: a body's parse (``kvgate.openai.request.parse_body``: decode, checks, rendering, estimate) is Python
that runs ~0.2-2 s on a hostile 8 MiB body (``scripts/hostile_body_cost.py``); on the loop, every other
connection waited that long (``scripts/parse_stall.py``). A body of more than ``OFF_LOOP_BYTES`` is parsed
on a worker thread instead; a smaller one stays on the loop, where its parse costs less than the hop
(docs/hardening.md, "Big bodies' parse off the event loop").

Bounds: one thread, so one parse at a time, as on the loop (the memory of parses in progress is that of
one); those waiting hold only their bodies, which the front's body budget (``maxBufferedBytes``) counts
already, and each a ``maxConcurrentRequests`` slot. A wait cancelled (the client left) drops a parse not
started yet; one started runs to its end (a thread cannot be stopped), its result dropped.

The GIL: the thread's Python hands the loop its turn every switch interval (5 ms), but one C call
(orjson's decode of the whole body, a regex pass over it) holds it to its end; the loop's stall is that
call's, not the whole parse's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Bodies longer than this are parsed off the loop. A hop to the thread and back costs ~0.1 ms of loop
# time; a 64 KiB chat body's parse about as much, a hostile one's ~15 ms (8 MiB: 2 s, scaled).
OFF_LOOP_BYTES = 64 << 10

# (the process's id with its executor: a forked child makes its own, its parent's thread is not in it)
_executor: tuple[int, ThreadPoolExecutor] | None = None


def _thread() -> ThreadPoolExecutor:
    global _executor
    pid = os.getpid()
    if _executor is None or _executor[0] != pid:
        _executor = (pid, ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvgate-parse"))
    return _executor[1]


async def off_loop(fn: Callable[[bytes], T], body: bytes) -> T:
    """``fn(body)`` on the process's parse thread (after the bodies queued before it); what it raises is
    raised here."""
    return await asyncio.get_running_loop().run_in_executor(_thread(), fn, body)
