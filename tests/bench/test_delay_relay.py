"""The userspace delay relay (``kvgate.bench.delay_relay``) over real loopback TCP: order, both directions
delayed by at least the one-way delay, the emulated handshake, end-of-stream and refusals carried across.
Only lower bounds on delays (a loaded machine can only make them longer); upper bounds catch hangs."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from kvgate.bench.delay_relay import DelayRelay, Route
from kvgate.bench.ports import free_port

RTT = 0.2
OWD = RTT / 2
SLACK = 0.9  # timers may fire a little early relative to perf_counter; never by 10 %


async def _upstream(handler: object) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


async def _relay(target_port: int, handshake: bool = True) -> DelayRelay:
    rl = DelayRelay(Route("127.0.0.1", 0, "127.0.0.1", target_port, RTT), handshake=handshake)
    await rl.start()
    return rl


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()  # the client's FIN, answered by ours


@pytest.fixture
async def echo_relay() -> AsyncIterator[DelayRelay]:
    server, port = await _upstream(_echo)
    rl = await _relay(port)
    yield rl
    await rl.close()
    server.close()


async def test_order_both_directions_and_round_trip(echo_relay: DelayRelay) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", echo_relay.port)
    t0 = time.perf_counter()
    w.write(b"first\n")
    assert await asyncio.wait_for(r.readline(), 10) == b"first\n"
    # The emulated handshake (one RTT) and then the round trip itself.
    assert time.perf_counter() - t0 >= SLACK * 2 * RTT
    t1 = time.perf_counter()
    w.write(b"again\n")
    assert await asyncio.wait_for(r.readline(), 10) == b"again\n"
    assert time.perf_counter() - t1 >= SLACK * RTT  # no handshake past the first bytes
    # Many small writes, back to back: every byte comes back, in order.
    payload = b"".join(b"%05d," % i for i in range(2000))
    for i in range(0, len(payload), 37):
        w.write(payload[i : i + 37])
    got = await asyncio.wait_for(r.readexactly(len(payload)), 10)
    assert got == payload
    w.write_eof()  # FIN travels to the server, whose close travels back
    assert await asyncio.wait_for(r.read(), 10) == b""
    w.close()
    assert echo_relay.connections == 1


async def test_server_first_bytes_one_way_delay_and_fin() -> None:
    async def greet(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello")
        await w.drain()
        w.close()  # closes right after: the FIN must arrive after the bytes, not before

    server, port = await _upstream(greet)
    rl = await _relay(port)
    try:
        t0 = time.perf_counter()
        r, w = await asyncio.open_connection("127.0.0.1", rl.port)
        got = await asyncio.wait_for(r.read(), 10)  # everything up to EOF
        elapsed = time.perf_counter() - t0
        assert got == b"hello"
        assert elapsed >= SLACK * OWD  # server -> client: one way
        assert elapsed < 5.0
        w.close()
    finally:
        await rl.close()
        server.close()


async def test_without_handshake_first_bytes_pay_one_round_trip(echo_relay: DelayRelay) -> None:
    rl = await _relay(echo_relay.route.target_port, handshake=False)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", rl.port)
        t0 = time.perf_counter()
        w.write(b"x\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"x\n"
        assert time.perf_counter() - t0 >= SLACK * RTT
        w.close()
    finally:
        await rl.close()


async def test_refused_target_resets_client_after_one_rtt() -> None:
    dead = free_port()  # a port nothing listens on (kvgate.bench.ports: no other process binds it)
    rl = await _relay(dead)
    try:
        t0 = time.perf_counter()
        r, w = await asyncio.open_connection("127.0.0.1", rl.port)
        w.write(b"anyone?\n")
        try:
            got = await asyncio.wait_for(r.read(), 10)
        except ConnectionResetError:
            got = b""
        assert got == b""
        assert time.perf_counter() - t0 >= SLACK * RTT
        w.close()
    finally:
        await rl.close()


async def test_upstream_reset_aborts_client() -> None:
    async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1)
        w.transport.abort()  # RST, not FIN

    server, port = await _upstream(reset)
    rl = await _relay(port)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", rl.port)
        w.write(b"x")
        try:
            got = await asyncio.wait_for(r.read(), 10)
        except ConnectionResetError:
            got = b""
        assert got == b""
        w.close()
    finally:
        await rl.close()
        server.close()


def test_route_parse() -> None:
    r = Route.parse("127.0.0.1:0=10.64.1.2:9090@40")
    assert (r.listen_host, r.listen_port, r.target_host, r.target_port) == ("127.0.0.1", 0, "10.64.1.2", 9090)
    assert r.rtt_s == pytest.approx(0.04)
    with pytest.raises(ValueError):
        Route.parse("127.0.0.1:0->x:1")


async def test_upstream_sockets_get_the_gateways_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A partitioned target (link cut, nothing reset) must fail the relayed connection as it would fail
    the global gateway's own direct one: the relay's upstream socket carries the router's keep-alive and
    TCP_USER_TIMEOUT, and a failed upstream resets the client (test above)."""
    from kvgate.bench import delay_relay

    seen: list[socket.socket] = []
    real = delay_relay._keepalive

    def record(w: asyncio.StreamWriter) -> None:
        real(w)
        seen.append(w.get_extra_info("socket"))

    monkeypatch.setattr(delay_relay, "_keepalive", record)
    server, port = await _upstream(_echo)
    rl = await _relay(port)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", rl.port)
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), 10) == b"ping"
        assert len(seen) == 1
        sock = seen[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            idle, interval, probes = delay_relay.KEEPALIVE
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == probes
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 11_000
        w.close()
    finally:
        await rl.close()
        server.close()
