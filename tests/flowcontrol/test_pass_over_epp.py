"""``kvgate epp`` with flow control (what ``kvgate serve --clusters`` Endpoint mode asks for a Responses
follow-up: the pod that holds the response, as the GIE subset hint): a hinted request queued for its
saturated pod no longer holds up its flow (review s18-doors M3, the same wait as in ``kvgate serve``); it
stays first in line for its pod. Real ext_proc over gRPC (the Envoy-playing harness), real HTTP backends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from flowcontrol.test_doors import HeldBackend, eventually, picker_config
from gateway.conftest import make_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel


async def test_a_hinted_request_waiting_for_its_pod_does_not_hold_up_its_flow() -> None:
    backends = [HeldBackend() for _ in range(3)]
    for i, backend in enumerate(backends):  # (each its own IP: the subset hint names pods by IP, qa32b Q1)
        backend.host = f"127.0.0.{61 + i}"
        await backend.start()
    a = backends[0]
    cfg = make_config([b.address for b in backends], extra={})
    epp_cfg = EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=picker_config())
    ctx = build_context(
        epp_cfg, EndpointStore.from_addresses([b.address for b in backends]), clock=time.monotonic
    )
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    ch = channel(f"127.0.0.1:{epp.port}")
    http = aiohttp.ClientSession()
    harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
    tasks: list[asyncio.Task[Any]] = []

    def send(prompt: str, subset: list[str] | None = None) -> asyncio.Task[Any]:
        body = b'{"model": "m", "prompt": "%s", "max_tokens": 1}' % prompt.encode()
        hdrs = {"x-llm-d-inference-fairness-id": "t"}
        t = asyncio.ensure_future(harness.request("POST", "/v1/completions", body, hdrs, subset=subset))
        tasks.append(t)
        return t

    def arrived() -> list[str]:
        return [x for b in backends for x in b.arrivals]

    try:
        send("hold", [a.address])
        await eventually(lambda: a.arrivals == ["hold"], "the first hinted request at its pod")
        send("follow", [a.address])  # its pod is full (maxConcurrency 1): queued for it
        await eventually(lambda: len(ctx.director.flow) == 1, "the second hinted request queued")  # type: ignore[union-attr,arg-type]
        send("new")  # the same flow, no hint; two pods are free: it goes now
        await eventually(lambda: "new" in arrived(), "the plain request at a free pod")
        assert "new" not in a.arrivals and "follow" not in arrived()
        a.release.release()  # its pod has room: the waiting request goes there, first in line
        await eventually(lambda: a.arrivals == ["hold", "follow"], "the hinted request at its pod")
    finally:
        for b in backends:
            for _ in range(5):
                b.release.release()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await http.close()
        await ch.close()
        await epp.stop(0)
        for b in backends:
            await b.stop()
