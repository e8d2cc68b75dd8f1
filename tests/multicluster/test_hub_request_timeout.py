"""The hub EPP (``kvgate epp --clusters``) honours the clusters file's ``limits.requestTimeoutSeconds`` and
``probe_timeout_s`` as ``kvgate serve --clusters`` does (closing note s20: before, it ignored both: a
request to a cluster gateway that never answered waited Envoy's route timeout or the EPP's 600 s idle
sweeper). Over real ext_proc gRPC (the Envoy-side test client), a real loopback gateway for the probe.

- before the response headers, at the bound: an ``ImmediateResponse`` 504 naming the key and the cluster
  (``upstream_timeout`` since gw26: Envoy may have sent the request, so a hub in front must not resend it);
  the cluster is charged (the hub picks as the body arrives: it held the whole bound), and its gateway
  probed (``GET /healthz`` within ``probe_timeout_s``): no answer, hung;
- after them: an event stream ends with the 504 error event (end of stream) once Envoy sent a body chunk of
  it (else an ``ImmediateResponse``: test_hub_cut_before_body.py), charged only when it was not
  making progress (data events all through the later half); any other body gets the 504 as an
  ``ImmediateResponse`` (Envoy resets the stream: the client sees an incomplete body), charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.extproc.context import AddressIndex
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import ClusterDirector
from kvgate.multicluster.state import ClusterState

HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})
SSE = {"content-type": "text/event-stream"}


class Healthz:
    """A cluster gateway's ``/healthz`` on loopback: answers at once, or after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.probes = 0

    async def _healthz(self, _request: web.Request) -> web.Response:
        self.probes += 1
        await asyncio.sleep(self.delay_s)
        return web.Response(status=404)  # any answer: the gateway lives


@contextlib.asynccontextmanager
async def serve_healthz(health: Healthz) -> AsyncIterator[int]:
    """``health``'s ``/healthz`` served on loopback: its port; the server cleaned up after."""
    app = web.Application()
    app.router.add_get("/healthz", health._healthz)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hub_epp(director: ClusterDirector) -> AsyncIterator[grpc.aio.Channel]:
    """``director``'s clusters, each fresh with room, behind a hub EPP on loopback, the bound read per
    request from the director's clusters file, as ``kvgate epp --clusters`` wires it: a gRPC channel to
    it; the channel, the EPP and the director closed after."""
    for st in director.state_list():
        st.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), time.monotonic())
    ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
    # (set after: main's SessionContext has no such argument, and its hub then shows what it did)
    ctx.request_timeout_s = lambda: director.cfg.request_timeout_s
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        yield ch
    finally:
        await ch.close()
        await server.stop(0)
        await director.close()


@contextlib.asynccontextmanager
async def _hub(
    bound_s: float, healthz_delay_s: float = 0.0
) -> AsyncIterator[tuple[ClusterDirector, ClusterState, Healthz, Exchange]]:
    """A hub EPP with one cluster, west, fresh with room, whose gateway serves ``/healthz``; the bound read
    per request from the director's clusters file (``hub_epp``)."""
    health = Healthz(healthz_delay_s)
    async with serve_healthz(health) as port:
        cfg = ClustersConfig((ClusterSpec("west", gateway=f"127.0.0.1:{port}"),), probe_timeout_s=0.3,
                             request_timeout_s=bound_s)  # fmt: skip
        director = ClusterDirector(cfg, "kvgate", seed=0)
        async with hub_epp(director) as ch, Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
            yield director, director.states["west"], health, ex


async def _until(check: object, what: str) -> None:
    assert callable(check)
    for _ in range(3000):  # (30 s: 5 s before)
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


@pytest.mark.parametrize("hung", [True, False])
async def test_no_head_by_the_bound_is_a_504_and_the_gateway_is_probed(hung: bool) -> None:
    async with _hub(0.6, healthz_delay_s=5.0 if hung else 0.0) as (director, west, health, ex):
        t0 = time.monotonic()
        out = await ex.send_request(HEADERS, BODY)
        assert out.destination == west.spec.gateway
        reply = await ex.read()  # (no response headers sent: the cluster is silent)
        took = time.monotonic() - t0
        assert reply.WhichOneof("response") == "immediate_response", reply
        assert reply.immediate_response.status.code == 504
        error = orjson.loads(reply.immediate_response.body)["error"]
        assert error["code"] == "upstream_timeout", error
        assert "limits.requestTimeoutSeconds (0.6s): cluster west: no response head" in error["message"]
        assert 0.5 < took < 5.0, took
        assert west.backoff_s > 0  # (it held the whole bound without a head)
        await _until(lambda: health.probes == 1, "the gateway was not probed after the cut")
        await _until(lambda: not director._live_probes, "the probe did not end")
        assert (west.hung_at is not None) is hung, west.hung_at
        await _until(lambda: west.inflight == 0, "the cut request is still in flight")


@pytest.mark.parametrize("steady", [True, False])
async def test_a_stream_is_ended_with_the_error_event_and_charged_only_when_not_steady(steady: bool) -> None:
    async with _hub(1.0) as (_director, west, health, ex):
        await ex.send_request(HEADERS, orjson.dumps({"model": "m", "prompt": "p", "stream": True}))
        await ex.send_response_headers(200, SSE)

        async def upstream() -> None:
            with contextlib.suppress(Exception):
                await ex.send_response_chunk(b'data: {"choices":[{"text":"t"}]}\n\n')
                for _ in range(200):
                    await asyncio.sleep(0.04)
                    chunk = b'data: {"choices":[{"text":"t"}]}\n\n' if steady else b": ping\n\n"
                    await ex.send_response_chunk(chunk)

        sender = asyncio.create_task(upstream())
        body = bytearray()
        try:
            async for chunk, _eos in ex.response_body():
                body += chunk
        finally:
            sender.cancel()
            await asyncio.wait([sender])
        assert body.endswith(b"\n\n") and b'"code":"request_timeout"' in body.rsplit(b"data: ", 1)[1], body
        assert b"limits.requestTimeoutSeconds (1s): cluster west" in body
        assert (west.backoff_s == 0) if steady else (west.backoff_s > 0), west.backoff_s
        assert health.probes == 0  # (a head came: the gateway answered)
        await _until(lambda: west.inflight == 0, "the cut request is still in flight")


async def test_a_plain_body_stalled_after_its_head_is_reset_at_the_bound_and_charged() -> None:
    async with _hub(0.6) as (_director, west, _health, ex):
        await ex.send_request(HEADERS, BODY)
        await ex.send_response_headers(200, {"content-type": "application/json"})
        await ex.send_response_chunk(b'{"object": "text_completion", "choices": [')
        reply = await ex.read()  # (the JSON is held whole: nothing answered until the cut)
        assert reply.WhichOneof("response") == "immediate_response", reply
        assert reply.immediate_response.status.code == 504
        assert west.backoff_s > 0
        await _until(lambda: west.inflight == 0, "the cut request is still in flight")


async def test_an_answer_within_the_bound_is_not_cut_and_no_bound_cuts_nothing() -> None:
    for bound_s in (5.0, 0.0):
        async with _hub(bound_s) as (_director, west, _health, ex):
            await ex.send_request(HEADERS, BODY)
            out = await ex.send_response(200, {"content-type": "application/json"}, [b'{"choices": []}'])
            assert out.body == b'{"choices": []}'
            assert west.backoff_s == 0


async def test_the_cli_reads_the_bound_from_the_clusters_file(tmp_path: Path) -> None:
    """The real ``kvgate epp --clusters`` (a subprocess): the file's ``limits.requestTimeoutSeconds``
    reaches the streams (a 504 ``upstream_timeout`` at 0.5 s for a gateway that never answers)."""
    health = Healthz()
    app = web.Application()
    app.router.add_get("/healthz", health._healthz)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    f = tmp_path / "c.yaml"
    f.write_text(
        f"limits: {{requestTimeoutSeconds: 0.5}}\nclusters: [{{name: west, gateway: '127.0.0.1:{port}'}}]\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "epp", "--clusters", str(f), "--plaintext", "--port", "0",
        "--grpc-health-port", "0", "--metrics-port", "0", "--cluster-policy", "round-robin",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = ""
        while "kvgate epp ready" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "the EPP ended before its ready line"
        grpc_port = line.split("grpc=", 1)[1].split()[0]
        ch = channel(f"127.0.0.1:{grpc_port}")
        try:
            async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                out = await ex.send_request(HEADERS, BODY)
                assert out.destination == f"127.0.0.1:{port}", out
                reply = await ex.read()
                assert reply.immediate_response.status.code == 504, reply
                assert b"limits.requestTimeoutSeconds (0.5s)" in reply.immediate_response.body
        finally:
            await ch.close()
    finally:
        proc.terminate()
        await proc.wait()
        await runner.cleanup()
