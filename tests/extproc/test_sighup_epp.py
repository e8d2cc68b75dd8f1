"""SIGHUP never ends ``kvgate epp``: it reads its configuration once, at start, so there is nothing to
reload: one WARNING line, and it serves on (``kvgate epp --clusters`` re-reads its clusters file:
``tests/multicluster/test_sighup_clusters.py``). Before (review s20-qa L5) SIGHUP kept its default action:
the process died at once, no drain, every stream cut."""

from __future__ import annotations

import asyncio
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvgate.extproc import keys

from .test_cli import _launch, _stop, upstreams  # noqa: F401 (the fixture)


async def test_sighup_does_not_end_the_epp(upstreams: list[str]) -> None:  # noqa: F811
    proc, ports = await _launch("--endpoints", ",".join(upstreams), "--model", "m", "--plaintext")
    try:
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.5)
        assert proc.returncode is None, f"SIGHUP ended the process ({proc.returncode})"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['health']}") as hc:
            resp = await health_pb2_grpc.HealthStub(hc).Check(
                health_pb2.HealthCheckRequest(service=keys.HEALTH_SERVICES[0])
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        rc = await _stop(proc)
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    assert rc == 0, err[-2000:]
    assert "SIGHUP: kvgate epp (it reads its configuration once, at start) has nothing to reload" in err, err
