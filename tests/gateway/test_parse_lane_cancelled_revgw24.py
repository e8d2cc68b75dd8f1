"""Review s24-rev-gw24 F1: a client whose waiting bodies were cancelled keeps their tags in ``_Lane.tags``;
its next body is tagged behind all of them, so it waits for as many of every other client's bodies.
``_Lane``'s docstring: "a client with none waiting starts at the current turn ... a client's first waiting
body waits for at most the one on the thread and one of each other client with bodies waiting"."""

from __future__ import annotations

import asyncio
import threading

from kvgate.httpfront import offload


def test_a_client_whose_waits_were_cancelled_starts_at_the_turn() -> None:
    async def main() -> list[str]:
        release, started = threading.Event(), threading.Event()
        order: list[str] = []

        def hold(body: bytes) -> None:
            started.set()
            release.wait(60)
            order.append(body.decode())

        first = asyncio.ensure_future(offload.off_loop(hold, b"h0", "holder"))
        assert await asyncio.to_thread(started.wait, 30)  # (the parse thread is held)
        # "a" queues 20 bodies, then its clients leave (timeouts, Envoy cancels): all cancelled
        gone = [asyncio.ensure_future(offload.off_loop(hold, b"gone", "a")) for _ in range(20)]
        await asyncio.sleep(0)
        for g in gone:
            g.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        # "b" queues 10 bodies, then "a" comes back with one (none of its own waiting)
        bs = [asyncio.ensure_future(offload.off_loop(hold, f"b{i}".encode(), "b")) for i in range(10)]
        back = asyncio.ensure_future(offload.off_loop(hold, b"a-back", "a"))
        await asyncio.sleep(0)
        release.set()
        await first
        await asyncio.gather(*bs, back)
        return order

    order = asyncio.run(main())
    # Fails on f9dab1a2 / main b10fb7c4: a-back is parsed last, after all ten of b's (its tag is 20, b's 0..9)
    assert order.index("a-back") <= 2, order


def test_a_first_waiting_body_waits_for_at_most_one_of_each_other_client() -> None:
    """Review s24-rev-gw24 L: the documented bound ("a client's first waiting body waits for the parse in
    progress and at most one body of each other client with bodies waiting"). "a" has a body on the
    thread and none waiting; "b" has two waiting; a's next body waits for both of b's (tag 1, b's 0 and 1)."""

    async def main() -> list[str]:
        release, started = threading.Event(), threading.Event()
        order: list[str] = []

        def hold(body: bytes) -> None:
            started.set()
            release.wait(60)
            order.append(body.decode())

        first = asyncio.ensure_future(offload.off_loop(hold, b"a0", "a"))
        assert await asyncio.to_thread(started.wait, 30)
        bs = [asyncio.ensure_future(offload.off_loop(hold, f"b{i}".encode(), "b")) for i in range(2)]
        a1 = asyncio.ensure_future(offload.off_loop(hold, b"a1", "a"))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, *bs, a1)
        return order

    order = asyncio.run(main())
    # Fails on f9dab1a2 / main b10fb7c4: ['a0', 'b0', 'b1', 'a1'] (a1 behind two of b's)
    assert order == ["a0", "b0", "a1", "b1"], order
