"""s28-qa Q2: ``kvgate serve`` kept its idle upstream connections to endpoints that had left the pool (a
reload, Kubernetes discovery) for as long as the server kept them open: nothing asked for them again, so
with endpoint churn the fds grew without end (73 -> 655 over 250 reloads). Now an endpoint that leaves
every pool has its idle connections closed at once and its busy ones when their exchange ends
(``UpstreamPool.retire``, from the proxy's store listener); idle connections are closed after
``max_idle_age_s`` unused; upstream sockets have TCP keepalive. The backends keep connections alive for an
hour, as the simulator's aiohttp does. Each test but the shared-address one fails on main 10c5bf91."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import yaml
from aiohttp import web

from gateway.conftest import read_body, until
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.reload import ConfigReloader
from kvgate.gateway.server import GatewayServer
from kvgate.gateway.upstream import UpstreamPool

WAIT_S = 30.0  # generous: a loaded CI machine
ANSWER = {
    "id": "cmpl-1", "object": "text_completion", "model": "m",
    "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip
_HEAD = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"


async def _backend(gate: asyncio.Event | None = None) -> tuple[web.AppRunner, str]:
    """An OpenAI-style backend keeping connections alive for an hour; it answers once ``gate`` is set."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if gate is not None:
            await gate.wait()
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/completions", answer)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=3600, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}"


def _open(runner: web.AppRunner) -> int:
    assert runner.server is not None
    return len(runner.server.connections)


def _doc(*pools: tuple[str, list[str], str]) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {"name": n, "endpoints": eps, "models": [m], "policy": "round-robin"} for n, eps, m in pools
        ],
    }


async def _complete(s: aiohttp.ClientSession, port: int, model: str = "m") -> None:
    url = f"http://127.0.0.1:{port}/v1/completions"
    async with s.post(url, json={"model": model, "prompt": "x", "max_tokens": 1}) as r:
        assert r.status == 200, await r.text()
        await r.read()


async def test_a_reload_that_removes_an_endpoint_closes_its_idle_connections(tmp_path) -> None:
    (ra, a), (rb, b) = await _backend(), await _backend()
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc(("p", [a], "m"))))
    cfg = parse_gateway_config(_doc(("p", [a], "m")))
    pools = [build_pool(p) for p in cfg.pools]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as s:
            await _complete(s, gw.port)
            assert _open(ra) == 1  # the gateway's, kept alive
            f.write_text(yaml.safe_dump(_doc(("p", [b], "m"))))
            assert ConfigReloader(str(f), cfg, pools, poll_s=None, server=gw).reload()
            assert [ep.address for ep in pools[0].endpoints()] == [b]
            await _complete(s, gw.port)
            await until(lambda: _open(ra) == 0, WAIT_S, f"the idle connection to {a} (left the pool) closed")
            assert gw.proxy is not None and a not in gw.proxy.upstream._idle
            assert _open(rb) == 1  # the pool's endpoint keeps its own
    finally:
        await gw.stop(drain_timeout=1.0)
        await ra.cleanup()
        await rb.cleanup()


async def test_an_address_still_in_another_pool_keeps_its_connections(tmp_path) -> None:
    (ra, a), (rb, b) = await _backend(), await _backend()
    f = tmp_path / "gw.yaml"
    first = _doc(("p", [a], "m"), ("q", [a], "m2"))
    f.write_text(yaml.safe_dump(first))
    cfg = parse_gateway_config(first)
    pools = [build_pool(p) for p in cfg.pools]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as s:
            await _complete(s, gw.port)
            kept = _open(ra)  # (the start's warm-up may have opened one per pool)
            assert kept >= 1
            f.write_text(yaml.safe_dump(_doc(("p", [b], "m"), ("q", [a], "m2"))))
            assert ConfigReloader(str(f), cfg, pools, poll_s=None, server=gw).reload()
            assert gw.proxy is not None and gw.proxy.upstream._idle.get(a)  # q still routes to it
            await _complete(s, gw.port, "m2")
            assert _open(ra) == kept  # none closed, none opened: reused
    finally:
        await gw.stop(drain_timeout=1.0)
        await ra.cleanup()
        await rb.cleanup()


async def test_a_busy_connection_finishes_its_exchange_then_closes() -> None:
    gate = asyncio.Event()
    runner, a = await _backend(gate)
    pool = UpstreamPool(5.0, None)
    try:
        sent = asyncio.create_task(pool.request(a, _HEAD, b"{}"))
        # wait on the pool's own side: the server counts the connection a few loop turns before
        # the client has it in pool._open, and a retire in between would not see it (rev-c28 F1)
        await until(lambda: any(c.address == a for c in pool._open), WAIT_S, "the request's connection open")
        pool.retire(a)  # its endpoint leaves while the request is in flight
        gate.set()
        resp = await asyncio.wait_for(sent, WAIT_S)
        assert resp.status == 200 and b"cmpl-1" in await asyncio.wait_for(read_body(resp), WAIT_S)
        resp.release()
        await until(lambda: _open(runner) == 0, WAIT_S, "the retired connection closed once released")
        assert a not in pool._idle
        # it may come back (the store adds it again): a new request connects anew and is kept
        pool.restore(a)
        resp = await asyncio.wait_for(pool.request(a, _HEAD, b"{}"), WAIT_S)
        await read_body(resp)
        resp.release()
        assert len(pool._idle[a]) == 1
    finally:
        pool.close()
        await runner.cleanup()


async def test_idle_connections_are_closed_after_the_idle_age_cap() -> None:
    runner, a = await _backend()
    pool = UpstreamPool(5.0, None, max_idle_age_s=0.5)
    try:
        resp = await asyncio.wait_for(pool.request(a, _HEAD, b"{}"), WAIT_S)
        await read_body(resp)
        resp.release()
        assert _open(runner) == 1
        await until(lambda: _open(runner) == 0, WAIT_S, "the idle connection closed past its age cap")
        await until(lambda: not pool._idle, WAIT_S, "no list kept for an address with no idle connection")
    finally:
        pool.close()
        await runner.cleanup()


async def test_upstream_connections_have_tcp_keepalive() -> None:
    runner, a = await _backend()
    pool = UpstreamPool(5.0, None)
    try:
        resp = await asyncio.wait_for(pool.request(a, _HEAD, b"{}"), WAIT_S)
        await read_body(resp)
        resp.release()
        (conn,) = pool._idle[a]
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1  # a vanished peer is seen
    finally:
        pool.close()
        await runner.cleanup()
