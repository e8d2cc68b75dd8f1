"""qa32b Q4: a stop's drain fails readiness only. ``EppServer.begin_drain`` called grpc's
``HealthServicer.enter_graceful_shutdown()``, which sets every service NOT_SERVING, ``liveness`` included, for
the whole drain (``--drain-timeout``; 120 s in the Helm chart), while the process still serves its open
streams: a liveness checker probing the draining replica (the chart's ``livenessProbe`` is gRPC ``service:
liveness``) saw it dead. Now readiness, the ext_proc service, the older manifests' name and ``""`` go
NOT_SERVING and liveness stays SERVING until the health server stops with the process. Fails on 0d8d2049."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvgate.extproc import keys
from kvgate.extproc.testing import channel

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_liveness_stays_serving_while_draining(start_epp) -> None:
    epp = await start_epp(["127.0.0.7:8000"])
    ch = channel(f"127.0.0.1:{epp.server.health_port}")
    try:
        stub = health_pb2_grpc.HealthStub(ch)

        async def status(service: str) -> int:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            return reply.status

        names = ("readiness", keys.EXT_PROC_SERVICE, keys.LEGACY_HEALTH_SERVICE, "")
        assert [await status(n) for n in ("liveness", *names)] == [SERVING] * 5
        await epp.server.begin_drain()  # (what a SIGTERM does first; the open streams are served after it)
        for _ in range(2):  # at once, and after a later refresh (``kvgate epp``'s loop refreshes health)
            assert [await status(n) for n in names] == [NOT_SERVING] * 4
            assert await status("liveness") == SERVING, (
                "liveness NOT_SERVING during the drain: the process is alive and serving its open streams"
            )
            await epp.server.refresh_health()
    finally:
        await ch.close()
