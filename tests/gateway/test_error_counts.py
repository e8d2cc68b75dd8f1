"""Each refused or failed request is counted once on ``inference_objective_request_error_total``,
under the HTTP status its client gets (review s12-tp L3 and L4; both pre-existing: the same on 07654ef).

- L3: the body's 400 (``_prepare``) and the front's 413 (Content-Length over maxBodyBytes) were never
  counted, while the 404, 401 and 429 refusals were.
- L4: a preempted request was counted twice, as ``preempted`` and as ``429``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from flowcontrol.test_preemption_doors import gateway_config
from gateway.conftest import closing_backend_gateway, request_errors
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.sim.server import Replica, ReplicaConfig

WAIT = 20.0
pytestmark = pytest.mark.asyncio


async def test_a_400_and_a_413_are_counted_like_the_404() -> None:
    """L3: docs/gateway.md says ``error_code`` is the HTTP status. ``_prepare`` counted its 404 (unknown
    model) once, unlabelled, but not its 400 (body not JSON, a field of the wrong type), nor did the
    front count its 413 (Content-Length over maxBodyBytes) or its 400 for malformed HTTP: a client
    sending malformed bodies never showed on the error metric."""
    async with closing_backend_gateway() as (gw, _port):
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as s:
            for body, want in (
                (b"not json", 400),
                (b'{"model": 3, "prompt": "x"}', 400),
                (b'{"model": "nope", "prompt": "x"}', 404),
                (b'{"model": "m", "prompt": "' + b"x" * 2000 + b'"}', 413),
            ):
                async with s.post(url, data=body) as r:
                    assert r.status == want
                    assert "error" in orjson.loads(await r.read())
        # Malformed HTTP: the front's own 400, before any handler.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"HTTP/1.1 400")
        writer.close()
        assert request_errors(gw) == {("", "", "400"): 3.0, ("", "", "404"): 1.0, ("", "", "413"): 1.0}


async def test_the_proxys_own_413_is_counted_once() -> None:
    """L3, the proxy's own check (``_read_body``): reached only when the front's cap is above the
    config's (the front refuses first otherwise); counted there, once."""
    async with closing_backend_gateway() as (gw, _port):
        assert gw._data is not None
        gw._data[1].max_body = 10_000  # the front lets it through; the proxy's own check refuses it
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        body = b'{"model": "m", "prompt": "' + b"x" * 2000 + b'"}'
        async with aiohttp.ClientSession() as s, s.post(url, data=body) as r:
            assert r.status == 413
        assert request_errors(gw) == {("", "", "413"): 1.0}


async def test_a_preempted_request_is_counted_once() -> None:
    """L4 (since 36e48f2): ``_dispatch`` counted a preempted request under ``preempted`` and raised a
    GatewayError(429), which ``_entry`` counted again under ``429``: one request, two error counts (a
    client gone or a cut stream is counted once). Now only ``429``, the status the client gets (the
    preemption itself is on kvgate_flow_control_preemptions_total). Setup (``gateway_config``) from
    tests/flowcontrol/test_preemption_doors.py, streamed case."""
    replica = Replica(ReplicaConfig(model="sim-model", time_scale=0.02, max_num_seqs=4, seed=0))
    await replica.start()
    cfg = parse_gateway_config(gateway_config(replica.port))
    gw = GatewayServer(cfg, [build_pool(p) for p in cfg.pools], scrape=False)
    await gw.start()
    try:
        url = f"http://127.0.0.1:{gw.port}/v1/completions"

        async def send(http: aiohttp.ClientSession, objective: str, prompt: str, n: int) -> int:
            body = {"model": "sim-model", "prompt": prompt, "max_tokens": n, "stream": True}
            async with http.post(url, json=body, headers={"x-gateway-inference-objective": objective}) as r:
                await r.read()
                return r.status

        async with aiohttp.ClientSession() as http:
            batch: asyncio.Future[Any] = asyncio.ensure_future(send(http, "batch", "words " * 500, 64))
            deadline = time.monotonic() + WAIT
            while replica.engine.num_running + replica.engine.num_waiting == 0:
                assert time.monotonic() < deadline, "the sheddable request never reached the replica"
                await asyncio.sleep(0.01)
            assert await asyncio.wait_for(send(http, "critical", "hi", 1), WAIT) == 200
            assert await asyncio.wait_for(batch, WAIT) == 429
        errors = {k: v for k, v in request_errors(gw).items() if v}
        assert errors == {("sim-model", "sim-model", "429"): 1.0}, errors
    finally:
        await gw.stop(drain_timeout=1.0)
        await replica.stop()
