"""Fixtures shared by the global gateway's tests (``test_error_counts.py``, ``test_front_hardening.py``,
``test_refusal_status.py``): loopback backends and global gateways, stopped after the test; the fetcher's
(``test_fetcher_lookups.py``, ``test_fetcher_slow_lookup.py``): a loopback pool aggregate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from gateway.backend import Backend
from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate, encode
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.httpfront.server import FrontLimits
from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.fetcher import EXT_PROC_SERVICE
from kvgate.multicluster.serve import GlobalGateway


@pytest.fixture(autouse=True)
def _no_kept_lookups() -> None:
    """Host-name answers kept by an earlier test (``hub._LOOKUPS``, 10 s) are not this test's."""
    hub._LOOKUPS.forget()


def aggregate_app(force_close: bool = False) -> web.Application:
    """Answers ``GET /aggregate`` with one pool's aggregate (``force_close``: then closes the connection)."""
    body = encode(PoolAggregate(name="p", snapshot_time=1.0, ready_endpoints=1, total_endpoints=1))

    async def handle(_req: web.Request) -> web.Response:
        resp = web.Response(body=body, content_type="application/json")
        if force_close:
            resp.force_close()
        return resp

    app = web.Application()
    app.router.add_get("/aggregate", handle)
    return app


@pytest.fixture
async def listening() -> AsyncIterator[int]:
    """The port of a loopback listener that closes every connection it takes (a hub probe's connect)."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def aggregate_port() -> AsyncIterator[int]:
    """The port of a loopback HTTP server answering ``GET /aggregate`` with one pool's aggregate."""
    runner, port = await serve_app(aggregate_app())
    try:
        yield port
    finally:
        await runner.cleanup()


async def post_raw(port: int, *, stream: bool = False, wait_s: float) -> tuple[int | str, bytes, float]:
    """A ``POST /v1/completions`` (model ``m``) to a gateway on loopback ``port``, one connection, closed:
    (the status, or ``hung`` when no whole answer came within ``wait_s``; the raw answer; seconds taken)."""
    raw = orjson.dumps({"model": "m", "prompt": "x", "stream": stream})
    t0 = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%b"
            % (len(raw), raw))  # fmt: skip
    try:
        data = await asyncio.wait_for(r.read(), wait_s)
    except TimeoutError:
        return "hung", b"", time.monotonic() - t0
    finally:
        w.close()
    return int(data.split(b" ", 2)[1]), data, time.monotonic() - t0


@pytest.fixture
async def pods() -> AsyncIterator[Callable[..., Any]]:
    started: list[Backend] = []

    async def make(**kw: Any) -> Backend:
        b = await Backend(f"pod{len(started)}", **kw).start()
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


@pytest.fixture
async def global_gateway() -> AsyncIterator[Callable[..., Any]]:
    """``make(*clusters, **kw)``: a started global gateway over ``clusters`` (``ClusterSpec``s), round-robin,
    no fetches, seed 1 (``kw``: ``GlobalGateway``'s other arguments); stopped after the test."""
    running: list[GlobalGateway] = []

    async def make(*clusters: ClusterSpec, **kw: Any) -> GlobalGateway:
        gw = GlobalGateway(ClustersConfig(tuple(clusters)), "round-robin", fetch=False, **{"seed": 1, **kw})
        await gw.start("127.0.0.1", 0)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        await gw.stop()


@pytest.fixture
def gateway(global_gateway: Callable[..., Any]) -> Callable[..., Any]:
    """``make(gateways, **limits)``: ``global_gateway`` in Parent mode, a cluster per gateway address, with
    these front limits."""

    async def make(gateways: list[str], **limits: Any) -> GlobalGateway:
        clusters = (ClusterSpec(f"c{i}", gateway=g) for i, g in enumerate(gateways))
        gw: GlobalGateway = await global_gateway(*clusters, limits=FrontLimits(**limits))
        return gw

    return make


@asynccontextmanager
async def epp_health_server(bind: str, servicer: Any = None) -> AsyncIterator[int]:
    """A real gRPC health server at ``bind`` (``host:0``) that answers SERVING for the ext_proc service
    (``servicer``: a ``HealthServicer`` of the test's own, else a plain one): its port; stopped at the end."""
    servicer = servicer if servicer is not None else health_aio.HealthServicer()
    await servicer.set(EXT_PROC_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(bind)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@asynccontextmanager
async def round_robin_epp(addresses: list[str]) -> AsyncIterator[tuple[EndpointStore, int]]:
    """A ``kvgate epp`` (in process, no health or metrics port) picking round-robin over ``addresses``:
    its endpoint store and gRPC port; stopped at the end."""
    store = EndpointStore.from_addresses(addresses)
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic)  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    try:
        yield store, epp.port
    finally:
        await epp.stop(0)
