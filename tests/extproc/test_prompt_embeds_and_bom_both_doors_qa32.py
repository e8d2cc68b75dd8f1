"""qa32a Q2, Q6: bodies vLLM serves that both doors refused with a 400 before any pick.

Q2: ``/v1/completions`` with ``prompt_embeds`` and no ``prompt`` (vLLM's embedding input,
``--enable-prompt-embeds``: vLLM 0.32's ``CompletionRequest`` asks only that one of the two be non-empty).
Q6: a body that starts with a UTF-8 byte order mark (Windows tools write it; vLLM reads bodies with
``json.loads`` on the bytes, which skips it). The model server here reads bodies as vLLM does.

Both fail on main aa46aa9a: 400 ``'prompt' is required`` / ``... byte order mark (BOM) is not supported``
at both doors."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import make_config, running_gateway
from kvgate.extproc.testing import EnvoyHarness

EMBEDS = orjson.dumps(
    {"model": "m", "prompt_embeds": base64.b64encode(b"\x00" * 256).decode(), "max_tokens": 2}
)
BOM = b"\xef\xbb\xbf" + orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
)
CASES = [("/v1/completions", EMBEDS), ("/v1/chat/completions", BOM)]


class StdlibJsonBackend(Backend):
    """Reads the body as vLLM (FastAPI) does: ``json.loads`` on the bytes (a BOM is fine)."""

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.received.append((request.path, dict(request.headers), body))
        choice = {"index": 0, "text": "ok", "finish_reason": "stop"}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        out = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"]}
        return web.json_response({**out, "choices": [choice], "usage": usage})


@pytest.fixture
async def server() -> AsyncIterator[Backend]:
    b = await StdlibJsonBackend("s").start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.mark.parametrize(("path", "body"), CASES, ids=["prompt_embeds", "bom"])
async def test_kvgate_serve_forwards_it(server: Backend, path: str, body: bytes) -> None:
    async with (
        running_gateway(make_config([server.address])) as gw,
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{gw.port}{path}", data=body) as r,
    ):
        status, text = r.status, await r.read()
    assert status == 200, (status, text)
    assert len(server.received) == 1


@pytest.mark.parametrize(("path", "body"), CASES, ids=["prompt_embeds", "bom"])
async def test_kvgate_epp_routes_it(server: Backend, start_epp, path: str, body: bytes) -> None:
    epp = await start_epp([server.address])
    async with aiohttp.ClientSession() as http:
        res = await EnvoyHarness(epp.stub, http).request("POST", path, body)
    assert res.status == 200, (res.status, res.body[:300])
    assert len(server.received) == 1
