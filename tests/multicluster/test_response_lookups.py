"""``kvgate serve --clusters``: ``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel`` go where the
response was made: in Parent mode to that cluster's gateway, in Endpoint mode to the pod that answered it;
an unknown id goes to the first cluster with a gateway (whose server answers its own 404); with
Endpoint-mode clusters only, an unknown id is the global gateway's own 404. Before, each was ``404 no
route``. Real HTTP on loopback (vLLM-like stores; a real ``kvgate epp`` over gRPC for Endpoint mode)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.responses_backend import ResponsesStore
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    started = [await ResponsesStore(f"s{i}").start() for i in range(2)]
    yield started
    for s in started:
        await s.stop()


async def _lookups(s: aiohttp.ClientSession, base: str, rid: str) -> None:
    async with s.get(f"{base}/v1/responses/{rid}") as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["id"] == rid
    async with s.get(f"{base}/v1/responses/{rid}?stream=true") as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert rid.encode() in await r.read()
    async with s.post(f"{base}/v1/responses/{rid}/cancel") as r:
        assert r.status == 200 and (await r.json())["status"] == "cancelled"


async def _make(s: aiohttp.ClientSession, base: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        async with s.post(base + "/v1/responses", data=orjson.dumps({"model": "m", "input": f"q{i}"})) as r:
            assert r.status == 200
            ids.append((await r.json())["id"])
    return ids


def _answered_at_home(stores: list[ResponsesStore], n: int) -> None:
    assert sum(len(st.lookups) for st in stores) == 3 * n
    for st in stores:
        assert {p.split("/")[3].split("?")[0] for _, p in st.lookups} <= set(st.made)


async def test_parent_mode_a_lookup_goes_to_the_cluster_that_made_the_response(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any]
) -> None:
    a, b = stores
    gw: GlobalGateway = await global_gateway(
        ClusterSpec("a", gateway=a.address), ClusterSpec("b", gateway=b.address)
    )
    base = f"http://127.0.0.1:{gw.port}"
    async with aiohttp.ClientSession() as s:
        ids = await _make(s, base, 4)
        assert a.made and b.made
        for rid in ids:
            await _lookups(s, base, rid)
        _answered_at_home(stores, 4)
        async with s.get(base + "/v1/responses/resp_nope") as r:  # unknown: the first cluster's 404
            assert r.status == 404 and r.headers["x-kvgate-cluster"] == "a"
            assert (await r.json())["error"]["message"] == "Response with id 'resp_nope' not found."
        async with s.delete(base + "/v1/responses/resp_nope") as r:
            assert r.status == 405 and r.headers["Allow"] == "GET"


async def test_endpoint_mode_a_lookup_goes_to_the_pod_that_made_the_response(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any]
) -> None:
    store = EndpointStore.from_addresses([st.address for st in stores])
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic)  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    try:
        gw: GlobalGateway = await global_gateway(ClusterSpec("c", epp=f"127.0.0.1:{epp.port}"))
        base = f"http://127.0.0.1:{gw.port}"
        async with aiohttp.ClientSession() as s:
            ids = await _make(s, base, 4)
            assert all(st.made for st in stores)
            for rid in ids:
                await _lookups(s, base, rid)
            _answered_at_home(stores, 4)
            async with s.get(base + "/v1/responses/resp_nope") as r:  # no gateway to ask: its own 404
                assert r.status == 404 and (await r.json())["error"]["code"] == "response_not_found"
    finally:
        await epp.stop(0)
