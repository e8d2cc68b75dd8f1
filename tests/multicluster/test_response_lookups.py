"""``kvgate serve --clusters``: ``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel`` go where the
response was made: in Parent mode to that cluster's gateway, in Endpoint mode to the pod that answered it;
an unknown id goes to the first cluster with a gateway (whose server answers its own 404); with
Endpoint-mode clusters only, an unknown id is the global gateway's own 404. Before, each was ``404 no
route``. Real HTTP on loopback (vLLM-like stores; a real ``kvgate epp`` over gRPC for Endpoint mode)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore, make_responses
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.conftest import round_robin_epp


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as started:
        yield started


async def _lookups(s: aiohttp.ClientSession, base: str, rid: str) -> None:
    async with s.get(f"{base}/v1/responses/{rid}") as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["id"] == rid
    async with s.get(f"{base}/v1/responses/{rid}?stream=true") as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert rid.encode() in await r.read()
    async with s.post(f"{base}/v1/responses/{rid}/cancel") as r:
        assert r.status == 200 and (await r.json())["status"] == "cancelled"


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
        ids = await make_responses(s, base, 4)
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
    async with round_robin_epp([st.address for st in stores]) as (_, epp_port):
        gw: GlobalGateway = await global_gateway(ClusterSpec("c", epp=f"127.0.0.1:{epp_port}"))
        base = f"http://127.0.0.1:{gw.port}"
        async with aiohttp.ClientSession() as s:
            ids = await make_responses(s, base, 4)
            assert all(st.made for st in stores)
            for rid in ids:
                await _lookups(s, base, rid)
            _answered_at_home(stores, 4)
            async with s.get(base + "/v1/responses/resp_nope") as r:  # no gateway to ask: its own 404
                assert r.status == 404 and (await r.json())["error"]["code"] == "response_not_found"


@asynccontextmanager
async def rewriting_epp(address: str, rewrite: dict[str, str]) -> AsyncIterator[int]:
    """A ``kvgate epp`` (in process) over one pod that rewrites the request's model (``rewrite``) and puts
    the client's name back in the answer: its gRPC port."""
    store = EndpointStore.from_addresses([address])
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic, model_rewrite=rewrite.get)  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    try:
        yield epp.port
    finally:
        await epp.stop(0)


async def test_endpoint_mode_a_lookup_shows_the_model_the_client_named(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any]
) -> None:
    """A response made through an EPP that rewrote ``alias`` to ``m2`` reads ``alias`` from its create (the
    EPP put it back), so its retrieval (JSON and ``?stream=true``) and cancel, sent straight to the pod, do
    too, as in Parent mode (the cluster's gateway puts it back there). Before: ``m2``, the rewrite target's
    name (closing note s19, qa19b L2's Endpoint-mode half). A response made with no rewrite keeps its name."""
    pod = stores[0]
    async with rewriting_epp(pod.address, {"alias": "m2"}) as epp_port:
        gw: GlobalGateway = await global_gateway(ClusterSpec("c", epp=f"127.0.0.1:{epp_port}"))
        base = f"http://127.0.0.1:{gw.port}"
        made = {}
        async with aiohttp.ClientSession() as s:
            for model in ("alias", "m"):
                async with s.post(base + "/v1/responses", json={"model": model, "input": "hi"}) as r:
                    doc = await r.json()
                    assert r.status == 200 and doc["model"] == model, doc  # (the create's put-back)
                    assert r.headers["x-kvgate-route-mode"] == "endpoint"
                    made[model] = doc["id"]
            assert pod.docs[made["alias"]]["model"] == "m2"  # (the pod holds the rewrite target's name)
            for model, rid in made.items():
                async with s.get(f"{base}/v1/responses/{rid}") as r:
                    assert r.status == 200 and (await r.json())["model"] == model
                    assert r.headers["x-kvgate-cluster"] == "c"
                async with s.get(f"{base}/v1/responses/{rid}", params={"stream": "true"}) as r:
                    raw = await r.read()
                    event = orjson.loads(raw.split(b"data: ", 1)[1].split(b"\n")[0])
                    assert r.status == 200 and event["response"]["model"] == model, raw
                async with s.post(f"{base}/v1/responses/{rid}/cancel") as r:
                    doc = await r.json()
                    assert r.status == 200 and doc["model"] == model and doc["status"] == "cancelled", doc
        assert len(pod.lookups) == 6  # (each went to the pod)
