"""Review s27-rev-fixes27c on ``kvgate epp``'s drain (s27-qa Q2 / Q5).

F3: with leader election the stop first releases the Lease (``_stop_all``: the election loop cancelled, then
a GET and a PUT of the Lease, 2 s timeout each) and only then began ``server.stop``, which set
``draining``: for up to ~4 s after SIGTERM (a slow API server) the replica still said ready (/readyz 200,
gRPC health SERVING) and Envoy kept sending it new streams. Fails on 74e19d4c (/readyz 200 during the
release).

F1: since fixqa27a (s27-qa Q5) the idle sweeper never looks at a routed stream waiting for its answer's head.
Nothing else bounded it when Envoy's host vanished without a FIN / RST (node loss, a partition): the ext_proc
server set no keepalive (gRPC core's server default: a ping after 2 h idle), so the stream, its buffers and
its endpoint's in-flight count stayed ~2 h. Now the server pings a connection silent 60 s and closes it 20 s
after an unanswered ping. Both fail on 2f03cfe0 (no keepalive option; no ``keepalive_s``)."""

from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2

from gateway.test_health_gate import wait_until
from kvgate.extproc.cli import _stop_all
from kvgate.extproc.server import DRAINING
from kvgate.extproc.testing import Exchange, channel

from .test_epp_drain_serves_open_streams_qa27 import (
    BODY,
    HEADERS,
    _readiness,
    _server,
    kvgate_epp,
    routed_stream,
)

GRPC_CORE_SERVER_KEEPALIVE_MS = 7_200_000


async def test_not_ready_from_the_stop_s_start_even_while_the_lease_is_released() -> None:
    server = _server()
    await server.start()
    during: list[tuple[int, str, int]] = []

    async def release() -> None:  # the elector's stop: the Lease's GET and PUT (a slow API server)
        during.append(await _readiness(server))

    async def nothing() -> None:
        return None

    kube = SimpleNamespace(elector=SimpleNamespace(stop=release), stop=nothing)
    try:
        assert await _readiness(server) == (200, "ok", health_pb2.HealthCheckResponse.SERVING)
        await _stop_all(server, kube, SimpleNamespace(stop=nothing), [], grace=0)  # type: ignore[arg-type]
        assert during == [(503, DRAINING, health_pb2.HealthCheckResponse.NOT_SERVING)], (
            "ready while the stop released its Lease"
        )
    finally:
        await server.stop(0)


async def test_the_ext_proc_server_pings_a_silent_peer_well_within_the_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []
    real = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs.get("options") or ()))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", spy)
    server = _server()
    await server.start()
    try:
        ext_proc = seen[0]  # (the first server built is ext_proc's; the health server follows)
        ping_ms = ext_proc.get("grpc.keepalive_time_ms", GRPC_CORE_SERVER_KEEPALIVE_MS)
        wait_ms = ext_proc.get("grpc.keepalive_timeout_ms", 20_000)
        # A vanished Envoy is noticed no later than the sweeper used to notice it (600 s by default).
        assert ping_ms + wait_ms <= server.options.stream_idle_timeout_s * 1000, ext_proc
        # The pings go on while the stream sends nothing, and Envoy's own pings are welcome.
        # (gRPC 1.85's server waits out ``ping_timeout_ms``, 60 s by default, not ``keepalive_timeout_ms``)
        assert ext_proc["grpc.http2.ping_timeout_ms"] == wait_ms
        assert ext_proc["grpc.http2.max_pings_without_data"] == 0
        assert ext_proc["grpc.keepalive_permit_without_calls"] == 1
        assert ext_proc["grpc.http2.min_ping_interval_without_data_ms"] <= 10_000
    finally:
        await server.stop(0)


class _Blackhole:
    """A TCP relay that, once ``vanish`` is set, swallows every byte both ways and never closes: Envoy's host
    gone without a FIN or RST, as the EPP sees it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.vanish = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [down_w, up_w]
        await asyncio.gather(self._pump(down_r, up_w), self._pump(up_r, down_w), return_exceptions=True)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if not self.vanish:
                dst.write(data)
                await dst.drain()

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_routed_stream_ends_when_envoy_s_host_vanishes() -> None:
    server = _server()
    # (60 s and 20 s by default; the ack's 10 s spares a loaded machine's stalls before the relay vanishes)
    server.options.keepalive_s, server.options.keepalive_timeout_s = 1.0, 10.0
    await server.start()
    relay = _Blackhole(server.port)
    await relay.start()
    ch = channel(f"127.0.0.1:{relay.port}")
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=60) as ex:
            assert (await ex.send_request(HEADERS, BODY)).destination == "127.0.0.1:9"  # routed
            assert server.servicer is not None and len(server.servicer.active) == 1
            relay.vanish = True  # the answer's head never comes, nor anything else
            # Exempt from the idle sweep (600 s): the keepalive alone ends it, after ~11 s here.
            await wait_until(lambda: not server.servicer.active, within=60)
            assert server.servicer.idle_closed == 0
    finally:
        await ch.close()
        await relay.close()
        await server.stop(0)


async def _stderr_until(stream: asyncio.StreamReader, needle: str, within_s: float) -> str:
    seen = ""
    async with asyncio.timeout(within_s):
        while needle not in seen:
            line = await stream.readline()
            assert line, f"stderr ended before {needle!r}: {seen[-2000:]}"
            seen += line.decode()
    return seen


async def test_a_second_signal_during_the_drain_cuts_it() -> None:
    async with kvgate_epp("--drain-timeout", "300") as (proc, grpc_port):
        assert proc.stderr is not None
        async with routed_stream(grpc_port, rpc_timeout_s=300) as ex:
            proc.send_signal(signal.SIGTERM)
            await _stderr_until(proc.stderr, "draining 1 open stream", 60)
            proc.send_signal(signal.SIGINT)  # the operator insists
            with pytest.raises(grpc.aio.AioRpcError):  # cut now, not at the 300 s drain's end
                await asyncio.wait_for(ex.read(), 120)
        assert await asyncio.wait_for(proc.wait(), 120) == 0  # (the rest of the stop ran)
        err = (await proc.stderr.read()).decode()
        assert "the drain cut short (a second signal): 1 stream still open cancelled" in err, err[-2000:]
