"""Review s27-rev-fixes27c on ``kvgate epp``'s drain (s27-qa Q2 / Q5).

F3: with leader election the stop first releases the Lease (``_stop_all``: the election loop cancelled, then
a GET and a PUT of the Lease, 2 s timeout each) and only then began ``server.stop``, which set
``draining``: for up to ~4 s after SIGTERM (a slow API server) the replica still said ready (/readyz 200,
gRPC health SERVING) and Envoy kept sending it new streams. Fails on 74e19d4c (/readyz 200 during the
release)."""

from __future__ import annotations

from types import SimpleNamespace

from grpc_health.v1 import health_pb2

from kvgate.extproc.cli import _stop_all
from kvgate.extproc.server import DRAINING

from .test_epp_drain_serves_open_streams_qa27 import _readiness, _server


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
