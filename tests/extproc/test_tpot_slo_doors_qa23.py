"""qa23 F1 (the review's test): a sheddable request with an ``x-slo-tpot-ms`` its endpoints cannot
meet was shed (429) by ``kvgate serve`` but sent (200) by ``kvgate epp``: the EPP's latency model
learned no TPOT from a stream whose client did not ask for ``stream_options.include_usage`` (most
clients), because it read output tokens only from a usage chunk; ``kvgate serve`` adds ``include_usage``
and learns. Same config, same requests, one outcome now.

Backend: a streaming model server on loopback, 6 tokens 30 ms apart (TPOT 30 ms), a usage chunk only
when asked for. 25 streamed warm-up requests without ``stream_options`` per door, then a sheddable
request with ``x-slo-tpot-ms: 1``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.conftest import make_config, make_pools
from gateway.handler_server import RouteServer
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.gateway.server import GatewayServer

TOKENS = 6
GAP = 0.03


class Streamer(RouteServer):
    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(TOKENS):
            await asyncio.sleep(GAP)
            chunk = {"id": "x", "object": "text_completion", "model": "m",
                     "choices": [{"index": 0, "text": "a", "finish_reason": None}]}  # fmt: skip
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            counts = {"prompt_tokens": 3, "completion_tokens": TOKENS, "total_tokens": TOKENS + 3}
            usage = {"id": "x", "object": "text_completion", "model": "m", "choices": [], "usage": counts}
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


PICKER: dict[str, Any] = {
    # lag-free, so no scrape is needed for a sheddable request to be admitted
    "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 100}},
    "plugins": [
        {"type": "predicted-latency-scorer", "parameters": {"confidence": 0.0}},
        {"type": "slo-headroom-tier-filter", "parameters": {"shedSheddable": True}},
        {"type": "max-score-picker"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "slo-headroom-tier-filter"},
                {"pluginRef": "predicted-latency-scorer"},
                {"pluginRef": "max-score-picker"},
            ],
        }
    ],
}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": TOKENS, "stream": True})
SHED = {"x-gateway-inference-objective": "batch", "x-slo-tpot-ms": "1"}


async def test_tpot_slo_sheds_alike_in_both_doors() -> None:
    backend = await Streamer().start()
    http = aiohttp.ClientSession()
    cfg = make_config([backend.address], extra={"objectives": [{"name": "batch", "priority": -1}]})
    cfg.pools[0].picker_config = PICKER
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    store = EndpointStore.from_addresses([backend.address])
    ctx = build_context(
        EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=PICKER), store, clock=time.monotonic
    )
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    ch = None
    try:
        await gw.start()
        await epp.start()
        ch = channel(f"127.0.0.1:{epp.port}")
        harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        hdrs = {"content-type": "application/json"}
        # The EPP first, alone (the two doors share this process: nothing the gateway learns may help it).
        for _ in range(25):  # enough first tokens and finishes for the model to know the endpoint
            res = await harness.request("POST", "/v1/completions", BODY)
            assert res.status == 200
        shed = await harness.request("POST", "/v1/completions", BODY, SHED)
        epp_status = shed.status
        for _ in range(25):
            async with http.post(url, data=BODY, headers=hdrs) as r:
                assert r.status == 200
                await r.read()
        async with http.post(url, data=BODY, headers={**hdrs, **SHED}) as r:
            serve_status = r.status
            await r.read()
        assert serve_status == 429, serve_status  # holds on main: kvgate serve sheds it
        assert epp_status == serve_status, (
            f"kvgate epp answered {epp_status} where kvgate serve answered {serve_status}: the EPP's latency "
            "model learned no TPOT from streams without include_usage"
        )
    finally:
        if ch is not None:
            await ch.close()
        await epp.stop(0)
        await gw.stop(drain_timeout=0.5)
        await http.close()
        await backend.stop()
