"""Review s23-rev-fix23c (both fixed by the lead, s23): ``httpfront.offload._Lane`` (fixgw23's loop-side
waiting list for the parse thread).

F1: a hand-off that raises (``run_in_executor``: the executor cannot start its thread, "can't start new
thread"; or it refuses new work) leaves ``busy`` True and nothing in flight: every later big body waits for
ever. Fails at 031f21ef: the second wait never ends (bounded here by a 10 s deadline, not a timing).

F2: a cancelled wait leaves its entry (``_Wait`` + its cancelled future) in the deque until the thread
frees; behind a live wait that is not handed yet (the thread busy with a slow parse), the entries of clients
who left pile up without bound (TurnQueue compacts its stale entries; the lane does not). Fails at 031f21ef:
tracemalloc bytes, no clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import tracemalloc

from kvgate.httpfront import offload


class _RefusesOnce(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.refused = False

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        if not self.refused:
            self.refused = True
            raise RuntimeError("can't start new thread")
        return super().submit(fn, *args, **kwargs)


def test_a_failed_hand_off_does_not_wedge_the_lane(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pool = _RefusesOnce()
    monkeypatch.setattr(offload, "_thread", lambda: pool)

    async def main() -> tuple[str, int | None]:
        try:
            await offload.off_loop(len, b"abc")
            first = "ok"
        except RuntimeError as e:
            first = str(e)  # (this request's 500: fine)
        try:
            second = await asyncio.wait_for(offload.off_loop(len, b"abcd"), 10)
        except TimeoutError:
            second = None
        return first, second

    try:
        first, second = asyncio.run(main())
    finally:
        pool.shutdown(wait=True)
    assert first == "can't start new thread"
    # FAILS at 031f21ef: busy stays True, the next body is never handed to the thread
    assert second == 4, "the lane is wedged: a later body waits for ever"


def test_cancelled_waits_do_not_pile_up_behind_a_waiting_body() -> None:
    """Memory held grows by the batches of cancelled waits before the fix (~276 B each); after it, the lane's
    list stays within twice its live waits and the memory after 20 batches is that after 5 (what is left
    of the last batch of 1,000 tasks is asyncio's, the same each time)."""

    async def main() -> tuple[int, int, int]:
        release, started = threading.Event(), threading.Event()

        def hold(_body: bytes) -> int:
            started.set()
            release.wait(60)
            return 0

        busy = asyncio.ensure_future(offload.off_loop(hold, b"x"))
        assert await asyncio.to_thread(started.wait, 30)  # (the parse thread is held)
        queued = asyncio.ensure_future(offload.off_loop(len, b"y"))  # a client that stays, not handed yet
        await asyncio.sleep(0)
        lane = offload._lanes[asyncio.get_running_loop()]
        tracemalloc.start()
        held: list[int] = []
        try:
            base = tracemalloc.get_traced_memory()[0]
            for k in range(20):
                waits = [asyncio.ensure_future(offload.off_loop(len, b"z")) for _ in range(1000)]
                await asyncio.sleep(0)
                for w in waits:
                    w.cancel()  # (each client left)
                await asyncio.gather(*waits, return_exceptions=True)
                del waits
                if k in (4, 19):
                    gc.collect()
                    held.append(tracemalloc.get_traced_memory()[0] - base)
            waiting = len(lane)  # (entries listed, cancelled ones included)
        finally:
            tracemalloc.stop()
            release.set()
            await busy
            await queued
        return held[0], held[1], waiting

    after5, after20, waiting = asyncio.run(main())
    # FAILS at 031f21ef: 15,000 more entries (a _Wait and a cancelled Future each) queued, ~4 MB more
    assert waiting <= 2 * 64 + 2, f"{waiting} entries in the lane for 1 live wait"
    assert after20 - after5 < 256 << 10, f"{(after20 - after5) / 1e6:.1f} MB more after 15,000 more cancels"
