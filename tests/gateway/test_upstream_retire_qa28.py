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

from gateway.conftest import read_body, until
from kvgate.gateway.reload import ConfigReloader
from kvgate.gateway.upstream import UpstreamPool

from ._keepalive_upstreams import (
    HEAD,
    keepalive_backend,
    open_connections,
    pools_doc,
    started_gateway,
    write_doc,
)

WAIT_S = 30.0  # generous: a loaded CI machine


async def _complete(s: aiohttp.ClientSession, port: int, model: str = "m") -> None:
    url = f"http://127.0.0.1:{port}/v1/completions"
    async with s.post(url, json={"model": model, "prompt": "x", "max_tokens": 1}) as r:
        assert r.status == 200, await r.text()
        await r.read()


async def test_a_reload_that_removes_an_endpoint_closes_its_idle_connections(tmp_path) -> None:
    (ra, a), (rb, b) = await keepalive_backend(), await keepalive_backend()
    f = tmp_path / "gw.yaml"
    cfg, pools, gw = await started_gateway(write_doc(f, pools_doc(("p", [a], "m"))))
    try:
        async with aiohttp.ClientSession() as s:
            await _complete(s, gw.port)
            assert open_connections(ra) == 1  # the gateway's, kept alive
            write_doc(f, pools_doc(("p", [b], "m")))
            assert ConfigReloader(str(f), cfg, pools, poll_s=None, server=gw).reload()
            assert [ep.address for ep in pools[0].endpoints()] == [b]
            await _complete(s, gw.port)
            await until(
                lambda: open_connections(ra) == 0,
                WAIT_S,
                f"the idle connection to {a} (left the pool) closed",
            )
            assert gw.proxy is not None and a not in gw.proxy.upstream._idle
            assert open_connections(rb) == 1  # the pool's endpoint keeps its own
    finally:
        await gw.stop(drain_timeout=1.0)
        await ra.cleanup()
        await rb.cleanup()


async def test_an_address_still_in_another_pool_keeps_its_connections(tmp_path) -> None:
    (ra, a), (rb, b) = await keepalive_backend(), await keepalive_backend()
    f = tmp_path / "gw.yaml"
    cfg, pools, gw = await started_gateway(write_doc(f, pools_doc(("p", [a], "m"), ("q", [a], "m2"))))
    try:
        async with aiohttp.ClientSession() as s:
            await _complete(s, gw.port)
            kept = open_connections(ra)  # (the start's warm-up may have opened one per pool)
            assert kept >= 1
            write_doc(f, pools_doc(("p", [b], "m"), ("q", [a], "m2")))
            assert ConfigReloader(str(f), cfg, pools, poll_s=None, server=gw).reload()
            assert gw.proxy is not None and gw.proxy.upstream._idle.get(a)  # q still routes to it
            await _complete(s, gw.port, "m2")
            assert open_connections(ra) == kept  # none closed, none opened: reused
    finally:
        await gw.stop(drain_timeout=1.0)
        await ra.cleanup()
        await rb.cleanup()


async def test_a_busy_connection_finishes_its_exchange_then_closes() -> None:
    gate = asyncio.Event()
    runner, a = await keepalive_backend(gate)
    pool = UpstreamPool(5.0, None)
    try:
        sent = asyncio.create_task(pool.request(a, HEAD, b"{}"))
        # wait on the pool's own side: the server counts the connection a few loop turns before
        # the client has it in pool._open, and a retire in between would not see it (rev-c28 F1)
        await until(lambda: any(c.address == a for c in pool._open), WAIT_S, "the request's connection open")
        pool.retire(a)  # its endpoint leaves while the request is in flight
        gate.set()
        resp = await asyncio.wait_for(sent, WAIT_S)
        assert resp.status == 200 and b"cmpl-1" in await asyncio.wait_for(read_body(resp), WAIT_S)
        resp.release()
        await until(
            lambda: open_connections(runner) == 0, WAIT_S, "the retired connection closed once released"
        )
        assert a not in pool._idle
        # it may come back (the store adds it again): a new request connects anew and is kept
        pool.restore(a)
        resp = await asyncio.wait_for(pool.request(a, HEAD, b"{}"), WAIT_S)
        await read_body(resp)
        resp.release()
        assert len(pool._idle[a]) == 1
    finally:
        pool.close()
        await runner.cleanup()


async def test_idle_connections_are_closed_after_the_idle_age_cap() -> None:
    runner, a = await keepalive_backend()
    pool = UpstreamPool(5.0, None, max_idle_age_s=0.5)
    try:
        resp = await asyncio.wait_for(pool.request(a, HEAD, b"{}"), WAIT_S)
        await read_body(resp)
        resp.release()
        assert open_connections(runner) == 1
        await until(
            lambda: open_connections(runner) == 0, WAIT_S, "the idle connection closed past its age cap"
        )
        await until(lambda: not pool._idle, WAIT_S, "no list kept for an address with no idle connection")
    finally:
        pool.close()
        await runner.cleanup()


async def test_upstream_connections_have_tcp_keepalive() -> None:
    runner, a = await keepalive_backend()
    pool = UpstreamPool(5.0, None)
    try:
        resp = await asyncio.wait_for(pool.request(a, HEAD, b"{}"), WAIT_S)
        await read_body(resp)
        resp.release()
        (conn,) = pool._idle[a]
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1  # a vanished peer is seen
    finally:
        pool.close()
        await runner.cleanup()
