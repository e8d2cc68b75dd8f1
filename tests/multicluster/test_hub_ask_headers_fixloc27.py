"""Review s27-rev-loc27 F3: the hub's shared ask round (keyed by ``authorization`` / ``x-api-key`` /
``proxy-authorization`` only) sent every header of its FIRST caller (cookie, ``x-request-id``,
``traceparent``, ...) on the asks it made for everyone sharing it: a second caller with the same key got
its asks made with the first caller's cookie. The asks now carry only the headers the round is keyed on,
as ``kvgate serve``'s do. Fails on 853522bb (the ask carried caller A's cookie, request id, traceparent).

Real HTTP on loopback; every server binds port 0. ``LOCATE_S`` is raised to 60 s so the held round cannot
end by its own bound while the test waits (30 s polls).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.multicluster import lookups
from kvgate.multicluster.clusters import ClusterSpec
from multicluster.test_hub_ask_rounds_loc27 import _hub

pytestmark = pytest.mark.asyncio
WAIT_S = 30.0
CALLER = ("cookie", "x-request-id", "traceparent")


class Held(ResponsesStore):
    """Holds each GET until ``release`` is set (the round stays in flight while the second caller joins)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        self.lookup_headers.append({k.lower(): v for k, v in request.headers.items()})
        await self.release.wait()
        return self._not_found(request.match_info["rid"])


async def _until(what: Callable[[], bool], why: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not what():
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.02)


async def test_a_shared_rounds_asks_carry_only_the_keyed_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookups, "LOCATE_S", 60.0)
    async with (
        serving(Held("a")) as stores,
        aiohttp.ClientSession() as s,
        _hub(ClusterSpec("a", gateway=stores[0].address)) as gw,
    ):
        url = f"http://127.0.0.1:{gw.port}/v1/responses/resp_x"

        async def get(who: str, trace: str) -> int:
            tp = f"00-{trace * 32}-{trace * 16}-01"
            headers = {
                "authorization": "Bearer k",
                "cookie": f"caller={who}",
                "x-request-id": who,
                "traceparent": tp,
            }
            async with s.get(url, headers=headers) as r:
                return r.status

        first = asyncio.ensure_future(get("A", "a"))
        await _until(lambda: bool(stores[0].lookup_headers), "the hub never asked")
        second = asyncio.ensure_future(get("B", "b"))
        rounds = gw.locator._rounds
        await _until(lambda: sum(r.waiters for r in rounds.values()) == 2, "B never joined A's round")
        stores[0].release.set()
        assert await asyncio.gather(first, second) == [404, 404]
        ask, *lookups_seen = stores[0].lookup_headers
        assert ask.get("authorization") == "Bearer k"  # (the key the round is shared by)
        assert {h: ask[h] for h in CALLER if h in ask} == {}, ask  # (before: caller A's, for both)
        # (each caller's own lookup, sent on to the cluster's 404, still carries its own headers)
        assert Counter(h.get("cookie") for h in lookups_seen) == {"caller=A": 1, "caller=B": 1}
