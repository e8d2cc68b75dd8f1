"""Review s24-rev-gw24 F1: a client whose waiting bodies were cancelled keeps their tags in ``_Lane.tags``;
its next body is tagged behind all of them, so it waits for as many of every other client's bodies.
``_Lane``'s docstring: "a client with none waiting starts at the current turn ... a client's first waiting
body waits for at most the one on the thread and one of each other client with bodies waiting"."""

from __future__ import annotations

import asyncio

from gateway.held_parse import HeldThread


def test_a_client_whose_waits_were_cancelled_starts_at_the_turn() -> None:
    async def main() -> list[str]:
        ht = HeldThread()
        first = await ht.hold_first(b"h0", "holder")
        # "a" queues 20 bodies, then its clients leave (timeouts, Envoy cancels): all cancelled
        gone = [ht.send(b"gone", "a") for _ in range(20)]
        await asyncio.sleep(0)
        for g in gone:
            g.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        # "b" queues 10 bodies, then "a" comes back with one (none of its own waiting)
        bs = [ht.send(f"b{i}".encode(), "b") for i in range(10)]
        back = ht.send(b"a-back", "a")
        await asyncio.sleep(0)
        ht.release.set()
        await first
        await asyncio.gather(*bs, back)
        return ht.order

    order = asyncio.run(main())
    # Fails on f9dab1a2 / main b10fb7c4: a-back is parsed last, after all ten of b's (its tag is 20, b's 0..9)
    assert order.index("a-back") <= 2, order


def test_a_first_waiting_body_waits_for_at_most_one_of_each_other_client() -> None:
    """Review s24-rev-gw24 L: the documented bound ("a client's first waiting body waits for the parse in
    progress and at most one body of each other client with bodies waiting"). "a" has a body on the
    thread and none waiting; "b" has two waiting; a's next body waits for both of b's (tag 1, b's 0 and 1)."""

    async def main() -> list[str]:
        ht = HeldThread()
        first = await ht.hold_first(b"a0", "a")
        bs = [ht.send(f"b{i}".encode(), "b") for i in range(2)]
        a1 = ht.send(b"a1", "a")
        await asyncio.sleep(0)
        ht.release.set()
        await asyncio.gather(first, *bs, a1)
        return ht.order

    order = asyncio.run(main())
    # Fails on f9dab1a2 / main b10fb7c4: ['a0', 'b0', 'b1', 'a1'] (a1 behind two of b's)
    assert order == ["a0", "b0", "a1", "b1"], order
