"""``GatewayServer.start``: the pools' data sources (KV-event feeds, each waiting for its catch-up) start
at once, bounded, not one pool after another; and the data port listens only after them (a single
``kvgate serve`` process as a ``--workers`` worker), bound from the start."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.conftest import make_config, make_pools
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway import server as server_mod
from kvgate.gateway.server import GatewayServer


class _Source:
    """A data source whose start waits (as a KV-event catch-up does) until ``go`` is set."""

    running = 0
    most = 0

    def __init__(self, go: asyncio.Event) -> None:
        self.go = go
        self.started = asyncio.Event()

    async def start(self) -> None:
        _Source.running += 1
        _Source.most = max(_Source.most, _Source.running)
        self.started.set()
        try:
            await self.go.wait()
        finally:
            _Source.running -= 1

    async def stop(self) -> None:
        pass


def _pools_config(n: int) -> object:
    pools = [{"name": f"p{i}", "endpoints": [f"127.0.0.1:{1000 + i}"], "models": [f"m{i}"],
              "policy": "round-robin"} for i in range(n)]  # fmt: skip
    return parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": pools})


def _gated(n: int) -> tuple[GatewayServer, list[_Source], asyncio.Event]:
    """A gateway (not started) of ``n`` pools, each with one data source whose start waits for ``go``:
    the gateway, the sources, ``go``."""
    cfg = _pools_config(n)
    pools = make_pools(cfg)  # type: ignore[arg-type]
    go = asyncio.Event()
    sources = [_Source(go) for _ in pools]
    for pool, src in zip(pools, sources, strict=True):
        pool.director.data_sources = lambda src=src: [src]  # type: ignore[attr-defined,misc]
    return GatewayServer(cfg, pools, scrape=False), sources, go  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _counts() -> None:
    _Source.running = _Source.most = 0


async def test_every_pools_data_sources_start_at_once() -> None:
    gw, sources, go = _gated(3)
    start = asyncio.create_task(gw.start())
    try:
        # One pool after another, the second would not start before the first's catch-up ended.
        async with asyncio.timeout(10):
            await asyncio.gather(*(s.started.wait() for s in sources))
        assert not gw.started
        go.set()
        await asyncio.wait_for(start, 10)
        assert gw.started and _Source.most == 3
    finally:
        go.set()
        await start
        await gw.stop(drain_timeout=0.5)


async def test_source_starts_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(server_mod, "SOURCE_STARTS", 2)
    gw, sources, go = _gated(4)
    start = asyncio.create_task(gw.start())
    try:
        async with asyncio.timeout(10):  # in order: the first two take the slots
            await asyncio.gather(sources[0].started.wait(), sources[1].started.wait())
        await asyncio.sleep(0.2)
        assert _Source.running == 2  # the other two wait for a slot
        go.set()
        await asyncio.wait_for(start, 10)
        assert _Source.most == 2 and all(s.started.is_set() for s in sources)
    finally:
        go.set()
        await start
        await gw.stop(drain_timeout=0.5)


async def test_with_listen_when_ready_the_data_port_opens_after_start_up(backends) -> None:
    (b,) = await backends(1)
    # The port as the --workers supervisor holds it: bound with SO_REUSEPORT, not listening.
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    port = reserve.getsockname()[1]
    cfg = make_config([b.address], extra={"listen": {"port": port}})
    pools = make_pools(cfg)
    go = asyncio.Event()
    src = _Source(go)
    pools[0].director.data_sources = lambda: [src]  # type: ignore[attr-defined,method-assign]
    gw = GatewayServer(cfg, pools, scrape=False, reuse_port=True, listen_when_ready=True)
    start = asyncio.create_task(gw.start())
    try:
        async with asyncio.timeout(10):
            await src.started.wait()
        with pytest.raises(ConnectionRefusedError):  # starting: the kernel hands it no connection
            await asyncio.open_connection("127.0.0.1", port)
        go.set()
        await asyncio.wait_for(start, 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        go.set()
        await start
        await gw.stop(drain_timeout=0.5)
        reserve.close()


async def test_a_single_process_listens_only_once_caught_up(backends) -> None:
    """One ``kvgate serve`` process (``GatewayServer`` as ``cli.serve`` builds it): while a KV-event
    catch-up runs, the data port is bound but refuses connections (it served them on a partial index
    before); once started, it answers."""
    (b,) = await backends(1)
    cfg = make_config([b.address])
    pools = make_pools(cfg)
    go = asyncio.Event()
    src = _Source(go)
    pools[0].director.data_sources = lambda: [src]  # type: ignore[attr-defined,method-assign]
    gw = GatewayServer(cfg, pools, scrape=False)
    start = asyncio.create_task(gw.start())
    try:
        async with asyncio.timeout(10):
            await src.started.wait()
        assert gw.port != 0  # bound (a taken port fails the start at once)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", gw.port)
        go.set()
        await asyncio.wait_for(start, 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        go.set()
        await start
        await gw.stop(drain_timeout=0.5)


async def test_a_taken_data_port_fails_the_start_before_the_catch_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = _pools_config(1)
        cfg.port = taken.getsockname()[1]  # type: ignore[attr-defined]
        pools = make_pools(cfg)  # type: ignore[arg-type]
        go = asyncio.Event()
        src = _Source(go)
        pools[0].director.data_sources = lambda: [src]  # type: ignore[attr-defined]
        gw = GatewayServer(cfg, pools, scrape=False)  # type: ignore[arg-type]
        try:
            with pytest.raises(OSError):
                await asyncio.wait_for(gw.start(), 10)
            assert not src.started.is_set()
        finally:
            await gw.stop(drain_timeout=0.5)


class _Failing:
    async def start(self) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("no such engine")

    async def stop(self) -> None:
        pass


async def test_a_failing_source_start_ends_the_others_before_start_raises() -> None:
    """One source's start fails: ``start`` raises that error, and the other starts are over by then
    (cancelled): a gather left them running, to add themselves to the gateway after its stop."""
    cfg = _pools_config(2)
    pools = make_pools(cfg)  # type: ignore[arg-type]
    go = asyncio.Event()
    slow = _Source(go)
    stopped: list[object] = []
    slow.stop = lambda: stopped.append(slow) or asyncio.sleep(0)  # type: ignore[method-assign]
    pools[0].director.data_sources = lambda: [_Failing()]  # type: ignore[attr-defined]
    pools[1].director.data_sources = lambda: [slow]  # type: ignore[attr-defined]
    gw = GatewayServer(cfg, pools, scrape=False)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match="no such engine"):
            await asyncio.wait_for(gw.start(), 10)
        assert slow.started.is_set() and _Source.running == 0  # its start was cancelled, not left running
    finally:
        await gw.stop(drain_timeout=0.5)
    assert stopped == [slow]  # stopped with the gateway, though its start never finished
    go.set()
    await asyncio.sleep(0.1)
    assert gw._scrapers == []


async def test_each_pools_scraper_pauses_as_long_as_its_saturation_detector_can_bridge() -> None:
    """A quiet endpoint is scraped every 0.5 s under the kvgate policy's utilization detector (it
    carries an explained page forward for 1 s), every 0.1 s under one set to the reference rule alone
    (the default elsewhere), every 0.05 s under a stricter reference staleness (100 ms)."""
    pools = [
        {"name": "p0", "endpoints": ["127.0.0.1:9"], "models": ["m0"], "policy": "kvgate"},
        {"name": "p1", "endpoints": ["127.0.0.1:9"], "models": ["m1"], "policy": "round-robin"},
        {"name": "p2", "endpoints": ["127.0.0.1:9"], "models": ["m2"],
         "endpointPickerConfig": {"saturationDetector": {"metricsStalenessThreshold": "100ms"}}},
    ]  # fmt: skip
    cfg = parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": pools})
    gw = GatewayServer(cfg)
    try:
        await asyncio.wait_for(gw.start(), 10)
        assert [s.quiet_interval for s in gw._scrapers] == [0.5, 0.1, 0.05]
        # A picker swapped in (a config reload) paces its pool's scraper from then on.
        gw.pools[0].director, gw.pools[1].director = gw.pools[1].director, gw.pools[0].director
        assert [s.quiet_interval for s in gw._scrapers] == [0.1, 0.5, 0.05]
    finally:
        await gw.stop(drain_timeout=0.5)
