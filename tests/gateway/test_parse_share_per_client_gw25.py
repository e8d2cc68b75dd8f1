"""A client's share of the body budget for its bodies waiting to be parsed (session-24 closing note: "waiting
big bodies share ``--max-buffered-bytes`` (no per-client share)"). One client (127.0.0.2) floods big slow
bodies while the first one's parse is held: they waited in the lane holding the front's budget, so another
client's (127.0.0.3) honest big body got the budget's 503. Now the flood's bodies past the client's share
(``limits.maxWaitingBytesPerClient``; here its default, a quarter of ``maxBufferedBytes``) get 429 at once
with an OpenAI error body and ``Retry-After``, and the honest body gets through. Real HTTP on loopback, each
client from its own source address; no timing assert (``held_parse``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.held_parse import HeldThread, from_host, hold_parse, post, tagged
from kvgate.gateway import proxy as proxy_module
from kvgate.httpfront import offload

FLOOD = 8
BUDGET = 6 << 20  # (a share of 1.5 MiB: the client's slow body on the thread, none listed behind it)


async def _answer(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict[str, Any], str]:
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
        data = await r.read()
        return r.status, orjson.loads(data) if data else {}, r.headers.get("Retry-After", "")


async def test_an_honest_big_body_gets_through_while_another_client_floods(
    backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (backend,) = await backends(1)
    hp = hold_parse(monkeypatch, proxy_module, tagged("slow"))
    slow = orjson.dumps({"model": "slow", "messages": [{}] * 340_000})  # (~1 MB, on the thread)
    turn = {"role": "user", "content": "word " * 50}
    honest = orjson.dumps({"model": "m", "max_tokens": 4, "messages": [turn] * 3_000})  # (~0.9 MB)
    assert offload.worth_the_thread(slow) and offload.worth_the_thread(honest)
    limits = {"maxBufferedBytes": BUDGET, "maxBodyBytes": 2 << 20}
    cfg = make_config([backend.address], extra={"limits": limits})
    async with (
        running_gateway(cfg) as gw,
        from_host("127.0.0.2") as hostile,
        from_host("127.0.0.3") as other,
    ):
        url = base_url(gw) + "/v1/chat/completions"
        proxy = gw.proxy
        assert proxy is not None
        flood = [asyncio.create_task(_answer(hostile, url, slow))]
        try:
            await until(hp.entered.is_set, what="the first slow parse started")
            flood += [asyncio.create_task(_answer(hostile, url, slow)) for _ in range(FLOOD)]
            # (every flood body answered or in the handler: the budget holds what it will hold)
            await until(lambda: sum(t.done() for t in flood) + proxy.inflight == FLOOD + 1, what="the flood")
            # FAILS on main 0cfe18cf: 503 (the flood's waiting bodies hold the budget)
            held = proxy.inflight  # (the flood's bodies held: up to half the budget, then its share)
            honest_task = asyncio.create_task(post(other, url, honest))
            await until(
                lambda: honest_task.done() or proxy.inflight == held + 1, what="the honest body queued"
            )
            assert not honest_task.done(), honest_task.result()
            assert hp.still_held()
        finally:
            hp.release.set()
        assert await honest_task == 200
        answers = await asyncio.gather(*flood)
    statuses = [a[0] for a in answers]
    assert statuses[0] == 404, statuses  # (the first, parsed: no such model)
    # (the others: listed below half the budget and parsed (404), past the share, or past the budget while
    # several arrived at once)
    assert set(statuses[1:]) <= {404, 429, 503} and 429 in statuses, statuses
    for _, body, after in (a for a in answers if a[0] == 429):
        assert after == "1"
        err = body["error"]
        assert "share" in err["message"] and "maxWaitingBytesPerClient" in err["message"], err
        assert (err["code"], err["type"]) == ("rate_limit_exceeded", "rate_limit_error"), err


def test_the_share_counts_waiting_and_parsing_bodies_and_gives_them_back() -> None:
    """The lane alone (budget ``limit`` 400, ``share`` 100): while the bodies listed or on the thread, the new
    one's included, hold at most half the budget nothing is refused (a first body over the share goes);
    past half, a client's bodies only within ``share`` (its first included) and all clients' within
    ``limit - share`` (a fresh key cannot get around it: review s25-rev-gw25 F3; unkeyed bodies are bound by
    it alone); cancelled and parsed bodies are given back; a share of ``limit`` or more is no bound."""

    async def main() -> None:
        ht = HeldThread()
        share, limit = 100, 400
        first = await ht.hold_first(b"x" * 150, "a", share, limit)  # (over the share, under half: goes)
        with pytest.raises(offload.ShareFull) as e:
            await ht.send(b"x" * 60, "a", share, limit)  # (210 > 200: a's 150 + 60 > 100)
        assert e.value.status == 429
        other = [ht.send(b"y" * 60, "b", share, limit)]  # (b's first, within its share)
        await asyncio.sleep(0)
        with pytest.raises(offload.ShareFull):
            await ht.send(b"y" * 41, "b", share, limit)  # (60 + 41 > 100)
        gone = ht.send(b"y" * 40, "b", share, limit)  # (60 + 40: fits)
        await asyncio.sleep(0)
        gone.cancel()  # (its 40 given back at once)
        await asyncio.gather(gone, return_exceptions=True)
        other.append(ht.send(b"y" * 40, "b", share, limit))
        await asyncio.sleep(0)
        lane = offload._lanes[asyncio.get_running_loop()]
        assert (lane._client("a").held, lane._client("b").held, lane.held) == (150, 100, 250)  # type: ignore[union-attr]
        with pytest.raises(offload.ShareFull) as e:
            await ht.send(b"z" * 60, "c", share, limit)  # (a fresh key's first body: 310 > 400 - 100)
        assert "all clients'" in e.value.message, e.value.message
        other.append(ht.send(b"n" * 50, "none", share, limit, keyed=False))  # (300: within the total)
        await asyncio.sleep(0)
        with pytest.raises(offload.ShareFull):
            await ht.send(b"n", "none", share, limit, keyed=False)  # (301 > 300)
        other.append(ht.send(b"o" * 90, "d", limit, limit))  # (a share of the whole budget: no bound)
        await asyncio.sleep(0)
        ht.release.set()
        assert await first == 150
        assert await asyncio.gather(*other) == [60, 40, 50, 90]
        assert lane._client("a") is None and lane._client("b") is None and lane.held == 0  # (nothing kept)
        assert await ht.send(b"x" * 150, "a", share, limit) == 150  # (a's share is free again)

    asyncio.run(main())
