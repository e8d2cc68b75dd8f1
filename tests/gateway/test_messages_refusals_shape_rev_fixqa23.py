"""Review s23-rev-fixqa23 R1 (the reviewer's rate-limit test, and the other refusals it lists): the
gateway's own refusals of a ``/v1/messages`` request in ``Proxy._entry`` (and the API key's at the head)
are in Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``), as the picker's and
vLLM's own answers there; they were OpenAI's (``{"error": {"message", "type", "param", "code"}}``), so
one endpoint answered in two shapes depending on which check refused. Other paths keep OpenAI's."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.conftest import base_url, make_config, running_gateway

MESSAGES = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def anthropic(doc: dict[str, Any], error_type: str) -> None:
    assert doc.get("type") == "error", f"not Anthropic's shape: {doc}"
    assert doc["error"].get("type") == error_type and doc["error"].get("message"), doc
    assert set(doc["error"]) == {"type", "message"}, doc


async def post(s: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with s.post(url, json=body, **kw) as r:
        return r.status, await r.json(content_type=None)


async def test_a_rate_limited_messages_request_gets_anthropics_error_shape() -> None:
    cfg = make_config(["127.0.0.1:1"], extra={"rateLimits": {"requestsPerMinute": 1}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/messages"
        for _ in range(5):
            status, doc = await post(s, url, MESSAGES)
            if status == 429:
                break
        assert status == 429, (status, doc)
        anthropic(doc, "rate_limit_error")


async def test_a_messages_request_past_max_concurrent_requests_gets_anthropics_error_shape(backends) -> None:
    (b,) = await backends(1)
    b.mode = "hang"
    cfg = make_config([b.address], extra={"limits": {"maxConcurrentRequests": 1}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        hung = asyncio.create_task(post(s, base_url(gw) + "/v1/completions", {"model": "m", "prompt": "a"}))
        try:
            await asyncio.wait_for(b.arrived.wait(), 30)
            status, doc = await post(s, base_url(gw) + "/v1/messages", MESSAGES)
            assert status == 429, (status, doc)
            anthropic(doc, "rate_limit_error")
            status, doc = await post(s, base_url(gw) + "/v1/chat/completions", CHAT)
            assert status == 429 and doc["error"]["code"] == "too_many_requests", doc  # (OpenAI's, as before)
        finally:
            hung.cancel()


async def test_a_messages_request_while_draining_gets_anthropics_error_shape() -> None:
    async with running_gateway(make_config(["127.0.0.1:1"])) as gw, aiohttp.ClientSession() as s:
        assert gw.proxy is not None
        gw.proxy.draining = True  # (the flag the drain sets first)
        status, doc = await post(s, base_url(gw) + "/v1/messages", MESSAGES)
        assert status == 503, (status, doc)
        anthropic(doc, "api_error")
        gw.proxy.draining = False


async def test_a_put_on_messages_gets_anthropics_error_shape() -> None:
    async with running_gateway(make_config(["127.0.0.1:1"])) as gw, aiohttp.ClientSession() as s:
        async with s.put(base_url(gw) + "/v1/messages", json=MESSAGES) as r:
            status, doc = r.status, await r.json(content_type=None)
        assert status == 405, (status, doc)
        anthropic(doc, "invalid_request_error")


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
async def test_a_keyless_messages_request_gets_anthropics_error_shape(path: str, monkeypatch) -> None:
    monkeypatch.setenv("KVG_TEST_KEYS", "sk-a=tenant-a")
    cfg = make_config(["127.0.0.1:1"], extra={"auth": {"apiKeysEnv": "KVG_TEST_KEYS"}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        status, doc = await post(s, base_url(gw) + path, MESSAGES if path == "/v1/messages" else CHAT)
        assert status == 401, (status, doc)
        if path == "/v1/messages":
            anthropic(doc, "authentication_error")
        else:
            assert doc["error"]["code"] == "invalid_api_key", doc
