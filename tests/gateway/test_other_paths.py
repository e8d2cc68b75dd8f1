"""s17-qa L7: ``kvgate serve`` routes vLLM's other JSON APIs that name a ``model`` (``/v1/responses``,
``/v1/messages``, rerank, score, pooling, classify, ``/v2/embed``) through the same pick, to the same
path upstream; before, each was a ``404 no route``."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway.backend import OTHER_PATHS
from gateway.conftest import base_url, make_config, running_gateway


def test_the_gateway_routes_the_paths_the_backend_serves():
    from kvgate.openai import request

    assert request.OTHER_PATHS == OTHER_PATHS


@pytest.mark.parametrize("path", OTHER_PATHS)
async def test_each_path_is_picked_and_sent_to_the_same_path(backends, path):
    bs = await backends(2)
    async with running_gateway(make_config([b.address for b in bs])) as gw, aiohttp.ClientSession() as s:
        for i in range(4):
            body = orjson.dumps({"model": "m", "input": f"q{i}", "query": "q", "documents": ["a"]})
            async with s.post(base_url(gw) + path, data=body, headers={"x-request-id": f"r{i}"}) as r:
                assert r.status == 200, await r.text()
                got = orjson.loads(await r.read())
                assert (got["path"], got["model"]) == (path, "m")
                assert r.headers["x-request-id"] == f"r{i}"
        # Round-robin over both endpoints, each request sent once, unchanged, to the same path.
        assert [len(b.received) for b in bs] == [2, 2]
        for b in bs:
            for got_path, headers, sent in b.received:
                assert got_path == path and sent["model"] == "m" and "stream_options" not in sent
                assert headers["x-request-id"].startswith("r")


async def test_a_streamed_response_is_relayed_without_stream_options_added(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        body = orjson.dumps({"model": "m", "input": "hi", "stream": True})
        async with s.post(base_url(gw) + "/v1/responses", data=body) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = await r.read()
        assert raw.count(b"event: response.") == 2 and raw.rstrip().endswith(b"}")
        assert b.received[-1][2] == {"model": "m", "input": "hi", "stream": True}  # (no stream_options)


async def test_unknown_model_missing_model_and_get_are_refused_as_for_completions(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/rerank"
        async with s.post(url, data=b'{"model": "nope", "query": "q"}') as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
        async with s.post(url, data=b'{"query": "q"}') as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "model"
        async with s.get(url) as r:
            assert r.status == 405
        async with s.post(base_url(gw) + "/v1/audio/transcriptions", data=b'{"model": "m"}') as r:
            assert r.status == 404  # (not routed: multipart forms, see docs/gateway.md)
    assert not b.received
