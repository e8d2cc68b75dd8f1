"""Clients take turns on the parse thread (``httpfront.offload._Lane``; session-23 closing note: "bodies over
1 MiB, or with much structure, still queue behind hostile parses: one thread, no per-client cap"). One
client (127.0.0.2) queues three slow bodies, the first one's parse held; then another client (127.0.0.3)
sends an honest big body (one of much structure: it goes to the thread too). Once the first slow parse
ends, the honest body is parsed next, before the first client's other two. FAILS on main a6977267: one
list in arrival order, so the honest body waited for both (their holds ran out). Real HTTP on loopback,
each client from its own source address; no timing assert (``held_parse``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.held_parse import HeldThread, from_host, hold_parse, post, tagged
from kvgate.gateway import proxy as proxy_module

SLOW = 3


async def test_another_clients_big_body_is_parsed_before_a_clients_queued_ones(
    backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (backend,) = await backends(1)
    hp = hold_parse(monkeypatch, proxy_module, tagged("slow"))
    slow = orjson.dumps({"model": "slow", "messages": [{}] * 50_000})
    turn = {"role": "user", "content": "word " * 50}
    honest = orjson.dumps({"model": "m", "max_tokens": 4, "messages": [turn] * 2_000})  # (~0.6 MB)
    async with (
        running_gateway(make_config([backend.address])) as gw,
        from_host("127.0.0.2") as hostile,
        from_host("127.0.0.3") as other,
    ):
        url = base_url(gw) + "/v1/chat/completions"
        proxy = gw.proxy
        assert proxy is not None
        slows = [asyncio.create_task(post(hostile, url, slow))]
        try:
            await until(hp.entered.is_set, what="the first slow parse started")
            slows += [asyncio.create_task(post(hostile, url, slow)) for _ in range(SLOW - 1)]
            await until(lambda: proxy.inflight == SLOW, what="the client's other slow bodies queued")
            honest_task = asyncio.create_task(post(other, url, honest))
            await until(lambda: proxy.inflight == SLOW + 1, what="the honest body queued")
            hp.let_one()  # (the first slow parse ends; the thread takes the next body)
            assert await honest_task == 200
            # FAILS on main a6977267: the honest body came after the two queued slow ones, whose holds ran
            # out (the order of parses: slow, slow, slow, honest)
            assert hp.held_out == [False], hp.held_out
            assert [h.startswith(b'{"model":"m"') for h in hp.started[:2]] == [False, True], hp.started
        finally:
            hp.release.set()
            statuses = await asyncio.gather(*slows)
    assert all(st in (400, 404) for st in statuses), statuses  # (no such model: refused after the parse)


def test_the_lane_takes_clients_in_turn_and_forgets_clients_that_left() -> None:
    """The lane alone (``off_loop``'s ``client``): while "a"'s first body holds the thread, "a" queues three
    more, then "b" one and "c" two; the thread takes b, c, then a and c in turn, a's last ones at the end.
    Then 10,000 clients each queue a body and leave: the lane keeps none of them (review s24-rev-gw24 F1)."""
    from kvgate.httpfront import offload

    async def main() -> tuple[list[str], int, int]:
        ht = HeldThread()
        first = await ht.hold_first(b"a0", "a")
        sent = [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"), ("c", "c2")]
        waits = [ht.send(b.encode(), c) for c, b in sent]
        await asyncio.sleep(0)
        lane = offload._lanes[asyncio.get_running_loop()]
        gone = []
        for i in range(10_000):
            gone.append(ht.send(b"x", f"x{i}"))
            await asyncio.sleep(0)
            gone[-1].cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        tags, listed = len(lane.ring) + (lane.current is not None), len(lane)
        ht.release.set()
        await first
        await asyncio.gather(*waits)
        return ht.order, tags, listed

    order, tags, listed = asyncio.run(main())
    # FAILS on main a6977267 (one list: a1, a2, a3, b1, c1, c2)
    assert order == ["a0", "b1", "c1", "a1", "c2", "a2", "a3"], order
    # (a, on the thread, b and c; their six waits listed: the leavers' entries went with them)
    assert (tags, listed) == (3, 6), (tags, listed)
