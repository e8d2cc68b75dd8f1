"""``kvgate serve --clusters``: a Responses follow-up (``previous_response_id``) goes to the cluster that
answered the response it names, no header needed (vLLM keeps a stored response in the server that made
it: anywhere else the follow-up is a 404), and in Endpoint mode to its pod (the EPP's subset hint).
Before doors18 the policy's order decided: with two clusters round-robin, every follow-up went to the
other cluster and got vLLM's 404 (and in Endpoint mode the EPP's pick, round-robin here, the other pod)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.conftest import round_robin_epp


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as started:
        yield started


async def _post(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes, str]:
    async with s.post(url, data=orjson.dumps(body)) as r:
        return r.status, await r.read(), r.headers.get("x-kvgate-cluster", "")


async def _two_clusters(
    global_gateway: Callable[..., Any], a: ResponsesStore, b: ResponsesStore
) -> tuple[GlobalGateway, str]:
    """``kvgate serve --clusters`` over clusters ``a`` and ``b`` (each one store); its Responses URL."""
    gw: GlobalGateway = await global_gateway(
        ClusterSpec("a", gateway=a.address), ClusterSpec("b", gateway=b.address)
    )
    return gw, f"http://127.0.0.1:{gw.port}/v1/responses"


def _stream_id(raw: bytes) -> str:
    first = raw.split(b"\n\n")[0].split(b"data: ", 1)[1]
    return str(orjson.loads(first)["response"]["id"])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_goes_to_the_cluster_that_made_its_response(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any], stream: bool
) -> None:
    a, b = stores
    gw, url = await _two_clusters(global_gateway, a, b)
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            status, raw, made_at = await _post(s, url, {"model": "m", "input": f"q{i}", "stream": stream})
            assert status == 200, raw
            rid = _stream_id(raw) if stream else orjson.loads(raw)["id"]
            for _ in range(2):  # (a chain: each follow-up names the response before it)
                status, raw, at = await _post(
                    s, url, {"model": "m", "input": "more", "previous_response_id": rid}
                )
                assert status == 200, raw
                assert at == made_at
                rid = orjson.loads(raw)["id"]
    assert len(a.followed) + len(b.followed) == 8
    assert len(gw.responses) == 12  # every answer's id, each with its cluster


@pytest.mark.parametrize("split", [None, 1400], ids=["long", "split"])
async def test_a_long_or_split_created_event_keeps_the_follow_ups_cluster(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any], split: int | None
) -> None:
    """A ``response.created`` past 64 KiB (vLLM's carries the request's instructions and tools: a long
    system prompt) left no home: only a whole event in the stream's first 64 KiB was read (review s18-doors
    M1; "long" fails before). Split across reads it is read too."""
    a, b = stores
    for st in stores:
        st.split_created = split
    _, url = await _two_clusters(global_gateway, a, b)
    instructions = "x" * (80 * 1024) if split is None else "y" * 2000
    async with aiohttp.ClientSession() as s:
        for i in range(2):  # (round-robin: the follow-up's own pick is the other cluster)
            body = {"model": "m", "input": f"q{i}", "stream": True, "instructions": instructions}
            status, raw, made_at = await _post(s, url, body)
            assert status == 200, raw
            status, raw, at = await _post(
                s, url, {"model": "m", "input": "more", "previous_response_id": _stream_id(raw)}
            )
            assert (status, at) == (200, made_at), raw


async def test_an_unknown_id_is_routed_as_any_request_and_an_unreachable_home_is_503(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any]
) -> None:
    a, b = stores
    gw, url = await _two_clusters(global_gateway, a, b)
    async with aiohttp.ClientSession() as s:
        status, raw, _ = await _post(
            s, url, {"model": "m", "input": "x", "previous_response_id": "resp_nope"}
        )
        assert status == 404 and b"not found" in raw  # (the server's own answer, passed on)
        gw.responses.remember("resp_elsewhere", ("gone", None))  # a cluster no longer in the file: ignored
        status, raw, _ = await _post(
            s, url, {"model": "m", "input": "x", "previous_response_id": "resp_elsewhere"}
        )
        assert status == 404
        # A follow-up whose cluster cannot be reached: 503 with Retry-After, not sent to the next cluster,
        # which never stored it (prev26; before, its 404).
        status, raw, made_at = await _post(s, url, {"model": "m", "input": "x"})
        rid = orjson.loads(raw)["id"]
        await (a if made_at == "a" else b).stop()
        async with s.post(
            url, data=orjson.dumps({"model": "m", "input": "x", "previous_response_id": rid})
        ) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1", await r.read()
            assert b"could not be reached" in await r.read()


@pytest.mark.parametrize("stream", [False, True])
async def test_in_endpoint_mode_a_follow_up_goes_to_the_pod_that_made_its_response(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any], stream: bool
) -> None:
    """One cluster, Endpoint mode only: its ``kvgate epp`` picks round-robin over two pods; a follow-up's
    pick is asked for the pod that answered (the subset hint), else it would alternate."""
    async with round_robin_epp([st.address for st in stores]) as (store, epp_port):
        gw: GlobalGateway = await global_gateway(ClusterSpec("c", epp=f"127.0.0.1:{epp_port}"))
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                status, raw, _ = await _post(s, url, {"model": "m", "input": f"q{i}", "stream": stream})
                assert status == 200, raw
                rid = _stream_id(raw) if stream else orjson.loads(raw)["id"]
                for _ in range(2):
                    body = {"model": "m", "input": "more", "previous_response_id": rid}
                    status, raw, _ = await _post(s, url, body)
                    assert status == 200, raw
                    rid = orjson.loads(raw)["id"]
            # The pod gone from the EPP's endpoints: its follow-up is picked on any pod (its 404 there).
            made = orjson.loads((await _post(s, url, {"model": "m", "input": "x"}))[1])["id"]
            home = next(st for st in stores if made in st.made)
            store.remove(home.address)
            status, raw, _ = await _post(s, url, {"model": "m", "input": "x", "previous_response_id": made})
            assert status == 404 and b"not found" in raw, raw
        assert sum(len(st.followed) for st in stores) == 6
        assert all(p.startswith(f"resp_{st.name}_") for st in stores for p in st.followed)
