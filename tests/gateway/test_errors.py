"""Every refusal the gateway makes, as an OpenAI JSON error with the right status."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway


async def _post(s: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> tuple[int, dict]:
    async with s.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as r:
        raw = await r.read()
        assert r.content_type == "application/json", raw
        return r.status, orjson.loads(raw)


def _assert_error(doc: dict, code: str | None = None, param: str | None = None) -> None:
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"prompt": "x"}', "model"),
        (b'{"model": 5, "prompt": "x"}', "model"),
        (b'{"model": "m"}', "prompt"),
        (b'{"model": "m", "prompt": {"a": 1}}', "prompt"),
        (b'{"model": "m", "prompt": "x", "stream": "maybe"}', "stream"),
        (b'{"model": "m", "prompt": "x", "max_tokens": -1}', "max_tokens"),
        (b'{"model": "m", "prompt": "x", "max_tokens": 1.5}', "max_tokens"),
    ],
)
async def test_400_bad_bodies(backends, body, param):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        status, doc = await _post(s, base_url(gw) + "/v1/completions", body)
        assert status == 400
        _assert_error(doc, "invalid_request_error", param)
    assert not b.received  # nothing reached the model server


async def test_400_chat_without_messages(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        status, doc = await _post(s, base_url(gw) + "/v1/chat/completions", b'{"model": "m", "messages": []}')
        assert status == 400
        _assert_error(doc, param="messages")


async def test_404_unknown_model_via_sdk(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        client = openai.AsyncOpenAI(base_url=base_url(gw) + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.NotFoundError) as ei:
            await client.completions.create(model="nope", prompt="x")
        assert "nope" in str(ei.value)
        assert ei.value.code == "model_not_found"
        await client.close()


async def test_404_unknown_path_and_405_wrong_method(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        async with s.get(base_url(gw) + "/v2/whatever") as r:
            assert r.status == 404
            _assert_error(orjson.loads(await r.read()), "not_found")
        async with s.get(base_url(gw) + "/v1/completions") as r:
            assert r.status == 405
            _assert_error(orjson.loads(await r.read()), "method_not_allowed")
            assert r.headers.get("Allow") == "POST"  # (RFC 9110 15.5.6; review s18-qa L2: there was none)
        async with s.post(base_url(gw) + "/v1/models") as r:
            assert r.status == 405
            assert r.headers.get("Allow") == "GET, HEAD"
        # RFC 9110 §9.1: what takes GET takes HEAD: the headers of the GET answer, no body (review s21-qa).
        for path in ("/v1/models", "/v1/models/m", "/v1/models/nope"):
            async with s.get(base_url(gw) + path) as g, s.head(base_url(gw) + path) as h:
                assert h.status == g.status, (path, h.status, g.status)
                assert h.headers["Content-Length"] == g.headers["Content-Length"]
                assert await h.read() == b""


async def test_413_body_too_large(backends):
    (b,) = await backends(1)
    cfg = make_config([b.address], extra={"limits": {"maxBodyBytes": 1000}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        body = orjson.dumps({"model": "m", "prompt": "x" * 2000})
        status, doc = await _post(s, base_url(gw) + "/v1/completions", body)
        assert status == 413
        _assert_error(doc, "request_too_large")

        # Chunked upload (no Content-Length): the limit still holds while reading.
        async def gen():
            for _ in range(4):
                yield b"x" * 500

        async with s.post(base_url(gw) + "/v1/completions", data=gen()) as r:
            assert r.status == 413
    assert not b.received


async def test_429_when_concurrency_limit_reached(backends):
    (b,) = await backends(1)
    b.mode = "hang"
    cfg = make_config([b.address], extra={"limits": {"maxConcurrentRequests": 1}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/completions"
        hung = asyncio.create_task(_post(s, url, b'{"model": "m", "prompt": "a"}'))
        await asyncio.wait_for(b.arrived.wait(), 30)
        async with s.post(url, data=b'{"model": "m", "prompt": "b"}') as r:
            assert r.status == 429
            _assert_error(await r.json(), "too_many_requests")
            assert r.headers.get("Retry-After") == "1"  # (review s17-qa L8: there was none)
            assert "x-envoy-ratelimited" not in r.headers  # capacity, not a tenant's limit
        hung.cancel()


async def test_429_when_the_flow_control_queue_is_full_says_when_to_retry(backends):
    """The 429 an overloaded pool sends (flow control's band full) carries ``Retry-After`` as the
    gateway's other 429s do (review s18-qa L1: it had none)."""
    (b,) = await backends(1)
    b.mode = "hang"
    picker = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "featureGates": ["flowControl"],
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 1, "maxPendingRequests": 0},
        },
        "flowControl": {"maxRequests": 1, "defaultRequestTTL": "20s"},
    }
    cfg = make_config([b.address], extra={"pools": [
        {"name": "p", "endpoints": [b.address], "models": ["m"], "endpointPickerConfig": picker}
    ]})  # fmt: skip
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/completions"
        held = [asyncio.create_task(_post(s, url, b'{"model": "m", "prompt": "a"}')) for _ in range(2)]
        await asyncio.wait_for(b.arrived.wait(), 30)  # one in flight (saturated), then one queued
        for _ in range(100):
            async with s.post(url, data=b'{"model": "m", "prompt": "b"}') as r:
                status, doc, retry = r.status, await r.json(), r.headers.get("Retry-After")
            if status == 429:
                break
            await asyncio.sleep(0.05)  # (the second may not have reached the queue yet)
        assert status == 429, doc
        assert "queue is full" in doc["error"]["message"]
        assert retry == "1"
        for t in held:
            t.cancel()


@pytest.mark.parametrize(
    ("sent", "want"),
    [
        ({"Retry-After": "7"}, {"retry-after": "7"}),
        ({"Retry-After": "99999999999"}, {"retry-after": "3600"}),  # (bounded as --clusters reads one)
        ({}, {"retry-after": "1"}),
        # A server's own rate-limit mark is not the client's (review s18-qa2 M1: --clusters took it for the
        # tenant's limit and stopped failing over).
        ({"Retry-After": "2", "x-envoy-ratelimited": "true"}, {"retry-after": "2"}),
    ],
)
async def test_a_model_servers_429_keeps_its_back_off(backends, sent, want):
    """A model server's own 429 reaches the client with its ``Retry-After`` (or the default) (review s18-gw
    L3: the reply kept only x-request-id and Content-Type)."""
    (b,) = await backends(1)
    b.mode, b.error_headers = "error429", sent
    body = b'{"model": "m", "prompt": "x"}'
    async with (
        running_gateway(make_config([b.address])) as gw,
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=body) as r,
    ):
        assert r.status == 429
        got = {
            k.lower(): v for k, v in r.headers.items() if k.lower() in ("retry-after", "x-envoy-ratelimited")
        }
    assert got == want


async def test_503_when_no_endpoint_is_healthy(backends):
    bs = await backends(2)
    async with running_gateway(make_config([b.address for b in bs])) as gw, aiohttp.ClientSession() as s:
        for pool in gw.pools:
            for ep in pool.endpoints():
                ep.healthy = False
        gw.health.cfg.eject_base_s = 60  # keep the probe from bringing them back during the test
        status, doc = await _post(s, base_url(gw) + "/v1/completions", b'{"model": "m", "prompt": "x"}')
        assert status == 503
        _assert_error(doc)
        assert doc["error"]["type"] == "service_unavailable"


async def test_upstream_5xx_with_no_other_endpoint_passes_through(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        b.mode = "error500"
        async with s.post(base_url(gw) + "/v1/completions", data=b'{"model": "m", "prompt": "x"}') as r:
            assert r.status == 500
            assert "b0 broken" in await r.text()
