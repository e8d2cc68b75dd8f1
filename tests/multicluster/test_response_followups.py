"""``kvgate serve --clusters``: a Responses follow-up (``previous_response_id``) goes to the cluster that
answered the response it names, no header needed (vLLM keeps a stored response in the server that made
it: anywhere else the follow-up is a 404). Before doors18 the policy's order decided: with two clusters
round-robin, every follow-up went to the other cluster and got vLLM's 404."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.responses_backend import ResponsesStore
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    started = [await ResponsesStore(f"s{i}").start() for i in range(2)]
    yield started
    for s in started:
        await s.stop()


async def _post(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes, str]:
    async with s.post(url, data=orjson.dumps(body)) as r:
        return r.status, await r.read(), r.headers.get("x-kvgate-cluster", "")


def _stream_id(raw: bytes) -> str:
    first = raw.split(b"\n\n")[0].split(b"data: ", 1)[1]
    return str(orjson.loads(first)["response"]["id"])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_goes_to_the_cluster_that_made_its_response(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any], stream: bool
) -> None:
    a, b = stores
    gw: GlobalGateway = await global_gateway(
        ClusterSpec("a", gateway=a.address), ClusterSpec("b", gateway=b.address)
    )
    url = f"http://127.0.0.1:{gw.port}/v1/responses"
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


async def test_an_unknown_id_is_routed_as_any_request_and_a_gone_cluster_is_skipped(
    stores: list[ResponsesStore], global_gateway: Callable[..., Any]
) -> None:
    a, b = stores
    gw: GlobalGateway = await global_gateway(
        ClusterSpec("a", gateway=a.address), ClusterSpec("b", gateway=b.address)
    )
    url = f"http://127.0.0.1:{gw.port}/v1/responses"
    async with aiohttp.ClientSession() as s:
        status, raw, _ = await _post(
            s, url, {"model": "m", "input": "x", "previous_response_id": "resp_nope"}
        )
        assert status == 404 and b"not found" in raw  # (the server's own answer, passed on)
        gw.responses.remember("resp_elsewhere", "gone")  # a cluster no longer in the file: ignored
        status, raw, _ = await _post(
            s, url, {"model": "m", "input": "x", "previous_response_id": "resp_elsewhere"}
        )
        assert status == 404
        # A follow-up whose cluster fails goes on to the next, as any request (where it is not found).
        status, raw, made_at = await _post(s, url, {"model": "m", "input": "x"})
        rid = orjson.loads(raw)["id"]
        await (a if made_at == "a" else b).stop()
        status, raw, at = await _post(s, url, {"model": "m", "input": "x", "previous_response_id": rid})
        assert status == 404 and at != made_at
