"""Review s23-rev-fixqa23 R6: a typed stream (Anthropic Messages, Responses API) preempted after its
head while the relay waits on its client, whose client then leaves, was counted ``client_gone``: the
relay decided "preempted" only after its read loop, and the client's leaving ended the loop by
``ConnectionResetError`` first. So the endpoint was credited a success and the tenant charged, where a
preemption is neither (the director had already released the slot and counted the preemption). Now
the relay's ``finally`` reads it from the stop's own record (``Stop.hit``): counted ``429``.

The sheddable client reads nothing (a small receive buffer), so the relay blocks writing the big ping
events its model server sends before any output; the test polls until the gateway's output to it is
paused, then sends the critical request (the preemption), then closes the sheddable connection."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from flowcontrol.test_preemption_doors import gateway_config
from gateway.conftest import request_errors
from gateway.handler_server import serve_app
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer

WAIT = 10.0
# A ping event of ~64 KiB (not an output event: the stream stays preemptible).
PING = b'event: ping\ndata: {"type":"ping","pad":"' + b"x" * 65536 + b'"}\n\n'
DONE = {
    "/v1/messages": b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    "/v1/responses": b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n',
}


def body_for(path: str, who: str) -> dict[str, Any]:
    if path == "/v1/responses":
        return {"model": "m", "input": who, "stream": True}
    return {"model": "m", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": who}]}


async def until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def backend_app() -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        who = body["input"] if "input" in body else body["messages"][0]["content"]
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if who == "batch":  # pings (a long prefill's), until the gateway drops the connection
            try:
                while request.transport is not None and not request.transport.is_closing():
                    await resp.write(PING)
            except ConnectionError:
                pass  # (aborted while its write waited)
            return resp
        await resp.write(DONE[request.path])
        await resp.write_eof()
        return resp

    app = web.Application()
    for path in DONE:
        app.router.add_post(path, answer)
    return await serve_app(app, access_log=None, shutdown_timeout=0.5)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
async def test_a_preempted_stream_whose_client_leaves_mid_write_is_counted_preempted(path: str) -> None:
    runner, port = await backend_app()
    gw: GatewayServer | None = None
    sock: socket.socket | None = None
    try:
        cfg = parse_gateway_config(gateway_config(port, model="m"))
        pools = [build_pool(p) for p in cfg.pools]
        gw = GatewayServer(cfg, pools, scrape=False)
        await gw.start()
        front = gw._servers[0][1]
        # The sheddable client: a raw socket that never reads.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        body = orjson.dumps(body_for(path, "batch"))
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"x-gateway-inference-objective: batch\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        await loop.sock_sendall(sock, head + body)
        await until(
            lambda: any(c.write_paused for c in front.connections), "the relay never waited on its client"
        )
        hdrs = {"x-gateway-inference-objective": "critical"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(gw_url(gw, path), json=body_for(path, "critical"), headers=hdrs) as r,
        ):
            assert r.status == 200, (r.status, await r.read())
            await r.read()
        sock.close()  # the sheddable client leaves (unread data: a reset)
        sock = None
        director = pools[0].director
        await until(lambda: director.store.all()[0].inflight.requests == 0, "a charge was not released")
        await until(lambda: any(request_errors(gw).values()), "the preempted stream was never counted")
        errors = {k[2]: v for k, v in request_errors(gw).items() if v}
        assert errors == {"429": 1}, f"a preempted stream whose client left counted as {errors}"
    finally:
        if sock is not None:
            sock.close()
        if gw is not None:
            await gw.stop(drain_timeout=0.5)
        await runner.cleanup()


def gw_url(gw: GatewayServer, path: str) -> str:
    return f"http://127.0.0.1:{gw.port}{path}"
