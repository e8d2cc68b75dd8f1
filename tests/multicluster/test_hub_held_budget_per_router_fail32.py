"""The hub's budget for held non-streamed bodies (``router.HELD_BODIES_MAX``, 64 MiB) was one module-level
budget for the whole process, where each ``kvgate serve`` proxy has its own: two hubs in one process (tests,
an embedding) shared it, so one hub's held bodies decided whether the other could hold its answers
(closing-s31). Now each ``GlobalRouter`` has its own (``GlobalRouter.held``). Two real hubs on loopback:
the first's budget spent, the second still holds a cut body whole and moves its request on (fo31's rule)
instead of relaying a 200 whose body breaks off.

Fails on main 2b9dcdff: the second hub, its shared budget spent, relays the cut 200."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson

from kvgate.multicluster import router as router_mod
from kvgate.multicluster.clusters import ClusterSpec
from rawupstream import loopback, read_request

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
# A 200 whose JSON body falls short of its Content-Length.
CUT = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{"id": "cmpl-'


@asynccontextmanager
async def pausing_cutter() -> AsyncIterator[tuple[str, list[int]]]:
    """127.0.0.1:0: answers each request ``CUT``, then closes half a second later, so that the hub has read
    the body's start before the cut (aiohttp raises a cut ahead of the bytes it buffered: a cut come with
    the bytes is seen at the first read, whatever the budget). Yields (address, hits)."""
    hits: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # (the hub sends a Content-Length)
        hits.append(1)
        writer.write(CUT)
        await writer.drain()
        await asyncio.sleep(0.5)

    async with loopback(serve) as address:
        yield address, hits


async def test_one_hubs_spent_held_budget_leaves_another_hubs_alone(pods, global_gateway) -> None:
    good = await pods()
    async with pausing_cutter() as (bad, hits):
        spent = await global_gateway(ClusterSpec("c0", gateway=good.address))
        hub = await global_gateway(ClusterSpec("c0", gateway=bad), ClusterSpec("c1", gateway=good.address))
        # (on main the module's budget, which every hub of the process shared)
        budget = getattr(spent.router, "held", None) or getattr(router_mod, "_HELD")  # noqa: B009
        assert budget.take(budget.limit - budget.used)
        try:
            url = f"http://127.0.0.1:{hub.port}/v1/completions"
            async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
                status = r.status
                try:
                    raw = await r.read()
                except aiohttp.ClientPayloadError as e:  # (on main: the cut 200's body broke off)
                    raw = f"cut: {e}".encode()
            assert status == 200, raw
            assert not raw.startswith(b"cut:"), raw
            assert orjson.loads(raw)["choices"][0]["text"].startswith("pod0-"), raw  # (c1's answer)
            assert hits == [1], "the cutting cluster was never tried"
            assert hub.router.held.used == 0  # (given back once the answer settled)
        finally:
            budget.give(budget.limit)
