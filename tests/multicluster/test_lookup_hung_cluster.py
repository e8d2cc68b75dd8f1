"""``kvgate serve --clusters``: a Responses lookup into a hung cluster gateway is bounded as a request is
(review s19-qa2 M1). Before, ``GET /v1/responses/{id}`` and its cancel waited the 300 s read timeout (no
``head_timeout_s``), and an unknown id went to the first cluster with a gateway even when it was known hung.
Now each try is bounded as a request is (a stream's head by ``head_timeout_s``, past it a plain answer's by a
probe of the gateway: 504), an id whose home is found hung is answered 504 at once, and an unknown id goes to
the first available cluster. Real HTTP on loopback: a
vLLM-like store and a gateway that accepts and never answers (a stopped process, as the kernel sees it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore, make_responses
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

BOUND_S = 10.0  # the test's own bound: before the fix, 300 s


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """A gateway address that accepts connections and reads, never answering."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for w in held:
        w.close()
    server.close()


async def _gateway(*clusters: ClusterSpec) -> GlobalGateway:
    cfg = ClustersConfig(tuple(clusters), head_timeout_s=0.5)
    gw = GlobalGateway(cfg, "round-robin", fetch=False, seed=1)
    await gw.start("127.0.0.1", 0)
    return gw


async def test_a_lookup_head_is_bounded_by_head_timeout_s(silent: str) -> None:
    async with serving(ResponsesStore("s")) as (store,):
        gw = await _gateway(ClusterSpec("h", gateway=silent), ClusterSpec("w", gateway=store.address))
        gw.responses.remember("resp_zz", ("h", None))  # (made there: the lookup goes there, not asked)
        try:
            async with aiohttp.ClientSession() as s:
                for method, path, why in (
                    ("GET", "/v1/responses/resp_zz?stream=true", "head_timeout_s"),  # a stream's head
                    ("GET", "/v1/responses/resp_zz", "answered no probe"),  # a plain answer: probed
                    ("POST", "/v1/responses/resp_zz/cancel", "answered no probe"),
                ):
                    async with asyncio.timeout(BOUND_S):
                        async with s.request(method, f"http://127.0.0.1:{gw.port}{path}") as r:
                            assert r.status == 504, await r.text()
                            err = (await r.json())["error"]
                            assert err["code"] == "upstream_timeout" and why in err["message"], err
            assert gw.inflight == 0
        finally:
            await gw.stop()


async def test_a_cluster_found_hung_is_not_asked() -> None:
    async with serving(ResponsesStore("e"), ResponsesStore("w")) as (east, west):
        gw = await _gateway(ClusterSpec("e", gateway=east.address), ClusterSpec("w", gateway=west.address))
        try:
            base = f"http://127.0.0.1:{gw.port}"
            async with aiohttp.ClientSession() as s:
                ids = await make_responses(s, base, 2)
                east_id = next(i for i in ids if i in east.made)
                st = gw.router.states["e"]
                st.fetched_at = st.hung_at = gw.router.clock() - 60.0  # found hung, no aggregate since
                async with asyncio.timeout(BOUND_S):
                    async with s.get(f"{base}/v1/responses/resp_zz") as r:
                        # unknown: west says it is not there, east may keep it and cannot say (prev26)
                        assert r.status == 503 and r.headers["Retry-After"] == "1", await r.text()
                    async with s.get(f"{base}/v1/responses/{east_id}") as r:  # its home hung: at once
                        assert r.status == 504 and "hung" in (await r.json())["error"]["message"]
                assert not east.lookups
        finally:
            await gw.stop()
