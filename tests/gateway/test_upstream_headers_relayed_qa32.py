"""qa32a Q4: ``kvgate serve`` relays a model server's end-to-end answer headers, as Envoy does for a client
of ``kvgate epp`` (rate-limit headers such as ``x-ratelimit-remaining-tokens``, ``openai-processing-ms``,
CORS, tracing). Before, only ``Content-Type``, the representation headers (late-a31) and ``Retry-After``
reached the client. Not relayed: the hop-by-hop ones (and those the server's ``Connection`` names), the
framing the gateway writes itself, ``Server``, the gateway's own (``x-request-id``, ``x-kvgate-*``) and
``x-envoy-ratelimited``.

Fails on main 86751e55: the relayed headers are absent (JSON answer and stream)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import make_config, running_gateway

SENT = {
    "x-ratelimit-remaining-tokens": "4242",
    "openai-processing-ms": "12",
    "access-control-allow-origin": "*",
    "x-request-id": "the-servers-own",
    "x-kvgate-pick": "forged",
    "x-envoy-ratelimited": "true",
    "x-dropped-by-connection": "1",
    "Connection": "x-dropped-by-connection",
    "Cache-Control": "max-age=60",
}


class HeaderBackend(Backend):
    def app(self) -> web.Application:
        app = super().app()

        async def add(request: web.Request, response: web.StreamResponse) -> None:
            response.headers.update(SENT)

        app.on_response_prepare.append(add)
        return app


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_model_servers_end_to_end_headers_reach_the_client(stream: bool) -> None:
    b = await HeaderBackend("h").start()
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        async with (
            running_gateway(make_config([b.address])) as gw,
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{gw.port}/v1/chat/completions",
                data=orjson.dumps(body),
                headers={"x-request-id": "client-rid"},
            ) as r,
        ):
            status, headers = r.status, r.headers
            await r.read()
        assert status == 200
        for key in ("x-ratelimit-remaining-tokens", "openai-processing-ms", "access-control-allow-origin"):
            assert headers.get(key) == SENT[key], dict(headers)
        assert headers.getall("x-request-id") == ["client-rid"], dict(headers)
        for key in ("x-kvgate-pick", "x-envoy-ratelimited", "x-dropped-by-connection", "Server"):
            assert key not in headers, dict(headers)
        assert headers.getall("Cache-Control") == (["no-cache"] if stream else ["max-age=60"]), dict(headers)
    finally:
        await b.stop()
