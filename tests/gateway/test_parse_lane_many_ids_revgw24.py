"""Review s24-rev-gw24 F2: a client that sends each body under a fresh id (an EPP fairness id the client
sets, or a ``kvgate serve`` peer host from an IPv6 /64) gets tag ``turn`` for every body; while it keeps one
such body waiting, ``turn`` never moves, so another client's body tagged ``turn + 1`` (its second body: one
was on the thread when it came) never gets the thread. docs/hardening.md "Session 24" says several ids are
"no worse than arrival order"; in arrival order this body is parsed next."""

from __future__ import annotations

import asyncio
import threading

from gateway.conftest import until
from kvgate.httpfront import offload

STEPS = 12


def test_fresh_ids_do_not_starve_a_clients_second_body() -> None:
    async def main() -> list[str]:
        turns = threading.Semaphore(0)
        started = threading.Event()
        order: list[str] = []

        def hold(body: bytes) -> None:
            started.set()
            turns.acquire(timeout=30)
            order.append(body.decode())

        first = asyncio.ensure_future(offload.off_loop(hold, b"h0", "honest"))  # (on the thread)
        assert await asyncio.to_thread(started.wait, 30)
        second = asyncio.ensure_future(offload.off_loop(hold, b"h1", "honest"))  # (waits: tag 1)
        fresh = [asyncio.ensure_future(offload.off_loop(hold, b"x0", "id-0"))]
        await asyncio.sleep(0)
        for step in range(1, STEPS):
            turns.release()  # (one parse ends; the thread takes the next body)
            done = len(order) + 1
            await until(lambda n=done: len(order) >= n, within_s=30, what="the next parse ended")
            if second.done():
                break
            # the other client keeps one body waiting, each under a new id
            fresh.append(asyncio.ensure_future(offload.off_loop(hold, f"x{step}".encode(), f"id-{step}")))
            await asyncio.sleep(0)
        for _ in range(2 * STEPS):
            turns.release()
        await asyncio.gather(first, second, *fresh)
        return order

    order = asyncio.run(main())
    # Fails on f9dab1a2 / main b10fb7c4: h1 comes after every fresh-id body
    # ['h0', 'x0', 'x1', ..., 'x11', 'h1']
    assert order.index("h1") <= 2, order
