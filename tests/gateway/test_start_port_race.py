"""The data port during start-up (review s7, finding 1): bound at once but listening only once started.

Linux lets two SO_REUSEADDR sockets bind one address as long as neither listens, so two gateways starting
on one port both bound it; the second to listen failed only then, after its whole start-up, and under
uvloop (what ``kvgate serve`` runs) ``start_serving`` swallowed the failure: the gateway said "listening"
and took no connection. Now the port is held alone until it listens, and a gateway whose data port does
not listen after ``start_serving`` fails its start. Both loops: asyncio and uvloop differ exactly here."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from gateway.conftest import make_pools
from gateway.test_start_sources import _pools_config, _Source
from kvgate.gateway.server import GatewayServer

LOOPS = ["asyncio", "uvloop"]


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    return (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def _data_socket(gw: GatewayServer) -> Any:
    assert gw._data is not None
    return gw._data[0].sockets[0]


def _listens(gw: GatewayServer) -> bool:
    try:
        return bool(_data_socket(gw).getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except (OSError, ValueError, IndexError):  # uvloop closed the socket when its listen failed
        return False


def _held(port: int = 0) -> tuple[GatewayServer, _Source, asyncio.Event]:
    """A gateway whose start will wait in its KV-event catch-up until the event is set."""
    cfg = _pools_config(1)
    cfg.port = port  # type: ignore[attr-defined]
    pools = make_pools(cfg)  # type: ignore[arg-type]
    go = asyncio.Event()
    src = _Source(go)
    pools[0].director.data_sources = lambda: [src]  # type: ignore[attr-defined]
    return GatewayServer(cfg, pools, scrape=False), src, go  # type: ignore[arg-type]


async def _second_start_on_a_starting_gateways_port() -> dict[str, Any]:
    """A starts (bound, held in its catch-up); B starts on A's port; then A finishes its start-up."""
    out: dict[str, Any] = {"b_error": None, "b_caught_up": False, "a_listens": False}
    a, src_a, go_a = _held()
    start_a = asyncio.create_task(a.start())
    b = None
    try:
        async with asyncio.timeout(10):
            await src_a.started.wait()
        b, src_b, go_b = _held(a.port)
        go_b.set()
        try:
            await asyncio.wait_for(b.start(), 10)
        except OSError as e:
            out["b_error"] = e
        out["b_caught_up"] = src_b.started.is_set()
        go_a.set()
        await asyncio.wait_for(start_a, 10)
        out["a_listens"] = a.started and _listens(a)
        return out
    finally:
        go_a.set()
        await asyncio.gather(start_a, return_exceptions=True)
        await a.stop(drain_timeout=0.1)
        if b is not None:
            await b.stop(drain_timeout=0.1)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_port_another_starting_gateway_holds_fails_the_second_start_at_once(loop: str) -> None:
    """B's start fails at its bind, before its catch-up; A, which held the port first, then listens.
    Before: B bound the port too (A did not listen yet) and started; whichever listened second failed."""
    got = _run(loop, _second_start_on_a_starting_gateways_port)
    assert isinstance(got["b_error"], OSError), f"B started on a port A holds; {got}"
    assert not got["b_caught_up"], got
    assert got["a_listens"], got


async def _another_listens_first() -> dict[str, Any]:
    """A is held in its catch-up; another socket gets to listen on A's port first (here: A's socket is
    given SO_REUSEADDR, as an older kvgate held it, and the other socket binds and listens); then A
    finishes. A's listen fails: its start must raise, not report started."""
    out: dict[str, Any] = {"a_error": None, "a_silent": False}
    a, src_a, go_a = _held()
    start_a = asyncio.create_task(a.start())
    other = socket.socket()
    try:
        async with asyncio.timeout(10):
            await src_a.started.wait()
        _data_socket(a).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", a.port))
        other.listen()
        go_a.set()
        try:
            await asyncio.wait_for(start_a, 10)
        except OSError as e:
            out["a_error"] = e
        out["a_silent"] = a.started and not _listens(a)
        return out
    finally:
        other.close()
        go_a.set()
        await asyncio.gather(start_a, return_exceptions=True)
        await a.stop(drain_timeout=0.1)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_gateway_never_reports_started_with_a_data_port_that_does_not_listen(loop: str) -> None:
    """asyncio's start_serving raises EADDRINUSE; uvloop's swallowed it (A said started, cli printed
    "listening on", nothing listened): the start now checks SO_ACCEPTCONN. FAILED under uvloop before."""
    got = _run(loop, _another_listens_first)
    assert not got["a_silent"], f"A started but its data port does not listen; {got}"
    assert isinstance(got["a_error"], OSError), got


async def _restart_past_time_wait() -> dict[str, Any]:
    """A serves a request on a kept-alive connection and stops (its drain closes the connection first:
    a TIME_WAIT on A's port); B starts on the same port at once."""
    out: dict[str, Any] = {"time_wait": False, "b_listens": False}
    a, _, go_a = _held()
    go_a.set()
    await a.start()
    port = a.port
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
    finally:
        await a.stop(drain_timeout=0.5)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.read(), 5)  # the gateway closed it first (its side in TIME_WAIT)
    writer.close()
    with socket.socket() as probe:  # without SO_REUSEADDR, the TIME_WAIT leftover makes a bind fail
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            out["time_wait"] = True
    b, _, go_b = _held(port)
    go_b.set()
    try:
        await asyncio.wait_for(b.start(), 10)
        out["b_listens"] = b.started and _listens(b)
    finally:
        await b.stop(drain_timeout=0.1)
    return out


@pytest.mark.parametrize("loop", LOOPS)
def test_a_restart_on_the_port_binds_past_time_wait_leftovers(loop: str) -> None:
    """Holding the port alone must not cost what SO_REUSEADDR is for: a restart right after a stop."""
    got = _run(loop, _restart_past_time_wait)
    assert got["time_wait"], f"no TIME_WAIT left to bind past (the test would prove nothing); {got}"
    assert got["b_listens"], got


async def test_stop_during_start_ends_the_start_cleanly() -> None:
    """stop() while start() waits for its sources (review s7, finding 4): start() returns without
    listening (before: AssertionError, the data listener gone)."""
    a, src_a, go_a = _held()
    start_a = asyncio.create_task(a.start())
    try:
        async with asyncio.timeout(10):
            await src_a.started.wait()
        port = a.port
        await a.stop(drain_timeout=0.1)
        go_a.set()
        await asyncio.wait_for(start_a, 10)  # raised AssertionError before
        assert not a.started
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        go_a.set()
        await asyncio.gather(start_a, return_exceptions=True)


async def test_a_single_process_on_a_workers_supervisors_port_fails_at_once() -> None:
    """A ``--workers`` supervisor holds the data port (its reserve socket, bound, never listening) while
    workers come and go. A single process that starts on that port fails at its bind (before, it bound
    beside the reserve and whichever listened last failed: under uvloop, silently), while a worker (the
    same user's SO_REUSEPORT socket) still shares the port and listens."""
    from kvgate.gateway.workers import Supervisor

    sup = Supervisor(_pools_config(1), 2)  # type: ignore[arg-type]
    port = sup.reserve_port()
    single, src, go = _held(port)
    go.set()
    worker, _, go_w = _held(port)
    worker.reuse_port = True
    go_w.set()
    try:
        with pytest.raises(OSError):
            await asyncio.wait_for(single.start(), 10)
        assert not src.started.is_set()
        await asyncio.wait_for(worker.start(), 10)
        assert worker.started and _listens(worker)
    finally:
        await single.stop(drain_timeout=0.1)
        await worker.stop(drain_timeout=0.1)
        assert sup._reserve is not None
        sup._reserve.close()


async def test_kvgate_serve_on_a_port_a_starting_gateway_holds_exits_at_once(backends) -> None:
    """The review's scenario with the real CLI (uvloop): a gateway holds the port in its catch-up, and
    ``kvgate serve`` starts on it. Before, that one bound it too, listened first and printed "listening on"
    (and the held one's late listen failed: silently under uvloop). Now it exits 1 with a message at its
    bind, and the held one listens once started."""
    (b,) = await backends(1)
    a, src_a, go_a = _held()
    start_a = asyncio.create_task(a.start())
    proc = None
    try:
        async with asyncio.timeout(10):
            await src_a.started.wait()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", "--endpoints", b.address, "--model", "m",
            "--policy", "round-robin", "--kv-events", "off", "--port", str(a.port), "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 60)  # b"": it exited without a line
        assert not first.startswith(b"kvgate serve: listening"), first
        err = await asyncio.wait_for(proc.stderr.read(), 60)
        assert await asyncio.wait_for(proc.wait(), 60) == 1
        assert b"kvgate serve: cannot start:" in err and b"Traceback" not in err, err
        go_a.set()
        await asyncio.wait_for(start_a, 10)
        assert a.started and _listens(a)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        go_a.set()
        await asyncio.gather(start_a, return_exceptions=True)
        await a.stop(drain_timeout=0.1)


async def test_stop_during_a_scrapers_start_leaves_no_feed_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s7-final-a N3: stop() while start() awaits a metrics scraper's start. The scraper was then
    added after stop() had stopped the others (never stopped), and the KV sources started anyway."""
    import kvgate.gateway.server as server

    go, starting = asyncio.Event(), asyncio.Event()
    started: list[Any] = []
    stopped: list[Any] = []

    class HeldScraper:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def start(self) -> None:
            started.append(self)
            starting.set()
            await go.wait()

        async def stop(self) -> None:
            stopped.append(self)

    monkeypatch.setattr(server, "MetricsScraper", HeldScraper)
    gw, src, go_src = _held()
    go_src.set()
    gw.scrape = True
    start = asyncio.create_task(gw.start())
    try:
        async with asyncio.timeout(10):
            await starting.wait()
        await gw.stop(drain_timeout=0.1)
        go.set()
        await asyncio.wait_for(start, 10)
        assert not gw.started
        assert stopped == started, (started, stopped)  # the scraper that was starting is stopped too
        assert not src.started.is_set()  # and the KV sources never start
    finally:
        go.set()
        await asyncio.gather(start, return_exceptions=True)
