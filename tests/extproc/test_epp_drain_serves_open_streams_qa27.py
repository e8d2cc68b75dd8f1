"""s27-qa Q2: on SIGTERM ``kvgate epp`` cut every ext_proc stream still open 5 s later
(``ServerOptions.grace_s`` 5 s, no flag): an LLM answer still streaming through Envoy 5 s into a rollout
lost its ext_proc stream ("Cancelling all calls") and Envoy (the reference's FailClose) reset the client's
response.

Upstream's EPP stops its gRPC server with ``GracefulStop()`` (every stream waited for;
internal/runnable/grpc.go), bounded by controller-runtime's graceful-shutdown timeout (30 s by default, no
flag); kvgate's chart gives the pod ``terminationGracePeriodSeconds: 130``; ``kvgate serve`` drains
``limits.drainTimeoutSeconds`` (30 s). Now the stop serves the open streams up to ``--drain-timeout`` (30 s
by default; the chart passes 120), and readiness fails from the stop's start (gRPC health and ``/readyz``) so
Envoy's endpoints drop the replica. All fail on 53bd5818: the stream cut at 5 s, ``/readyz`` 200 while
stopping, ``--drain-timeout`` an unknown flag (exit 2)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator

import aiohttp
import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.test_health_gate import wait_until
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.cli import parser
from kvgate.extproc.context import build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import DRAINING, EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel
from kvgate.openai.request import RequestPolicy

HEADERS = {":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw", ":scheme": "http",
           "content-type": "application/json"}  # fmt: skip
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
SSE = {"content-type": "text/event-stream"}
LAST = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n'
READY = re.compile(r"grpc=(\d+) health=(\d+) metrics=(\d+)")


def _server() -> EppServer:
    store = EndpointStore.from_addresses(["127.0.0.1:9"])  # never dialled: Envoy's side is played here
    director = build_epp_director(None, store, policy="round-robin", clock=time.monotonic)
    metrics = EppMetrics()
    ctx = SessionContext(
        director, lambda: {e.address: e for e in store.all()}, clock=time.monotonic, observer=metrics,
        policy=RequestPolicy(objectives={}),
    )  # fmt: skip
    opts = ServerOptions(host="127.0.0.1", port=0, health_port=0, metrics_port=0)  # the drain: the default
    return EppServer(ctx, opts, metrics=metrics, ready=lambda: True, readyz=lambda: None)


async def _readiness(server: EppServer) -> tuple[int, str, int]:
    """``/readyz``'s status and text, and gRPC health's ``readiness``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.metrics_port}/readyz") as r,
    ):
        status, text = r.status, await r.text()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as hc:
        got = await health_pb2_grpc.HealthStub(hc).Check(health_pb2.HealthCheckRequest(service="readiness"))
    return status, text, got.status


async def test_a_stream_still_answering_6s_into_the_stop_is_served_to_its_end_not_ready_meanwhile() -> None:
    server = _server()
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    stopping: asyncio.Task[None] | None = None
    try:
        assert await _readiness(server) == (200, "ok", health_pb2.HealthCheckResponse.SERVING)
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=60) as ex:
            picked = await ex.send_request(HEADERS, BODY)
            assert picked.destination == "127.0.0.1:9"
            await ex.send_response_headers(200, SSE, served="127.0.0.1:9")
            stopping = asyncio.create_task(server.stop(120))  # SIGTERM, the chart's drain
            await wait_until(lambda: server.draining, within=30)  # (the stop's first step)
            # Not ready from the stop's start: Envoy's endpoints drop this replica, no new stream comes.
            assert await _readiness(server) == (503, DRAINING, health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(6.5)  # the answer still streams (an LLM answer takes tens of seconds)
            await ex.send_response_chunk(LAST, end_of_stream=True)
            got = bytearray()
            async for chunk, _eos in ex.response_body():
                got += chunk
            assert bytes(got) == LAST
        # Its last stream ended: the stop ends now, not at the 120 s bound (review s27-rev-fixes27c F4).
        await asyncio.wait_for(stopping, 60)
    finally:
        if stopping is None:
            await server.stop(0)
        else:
            await asyncio.wait([stopping], timeout=180)
        await ch.close()


def test_the_drain_timeout_flag() -> None:
    assert parser().parse_args([]).drain_timeout == 30.0
    assert parser().parse_args(["--drain-timeout", "120"]).drain_timeout == 120.0
    assert parser().parse_args(["--drain-timeout", "0"]).drain_timeout == 0.0
    for bad in ("-1", "inf", "nan", "soon"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--drain-timeout", bad])


async def test_kvgate_epp_cuts_a_stream_still_open_at_its_drain_timeout_and_says_so() -> None:
    """The flag reaches the process's stop: with ``--drain-timeout 1`` an open stream is cut at the bound,
    the WARNING names the flag, and the EPP exits 0."""
    async with kvgate_epp("--drain-timeout", "1") as (proc, grpc_port):
        async with routed_stream(grpc_port, rpc_timeout_s=60) as ex:
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError):  # cut at the drain's end (never answered)
                await ex.read()
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        err = (await proc.stderr.read()).decode()
        assert "draining 1 open stream for up to 1s (--drain-timeout)" in err, err[-2000:]
        assert "the drain deadline (1s, --drain-timeout) cuts 1 stream still open" in err, err[-2000:]


# --- shared with test_epp_drain_rev_fixes27c.py ----------------------------------------------------------


@contextlib.asynccontextmanager
async def kvgate_epp(*flags: str) -> AsyncIterator[tuple[Process, int]]:
    """A ``kvgate epp`` process (its ports bound from 0, one endpoint never dialled, ``flags`` added) once
    ready, and its ext_proc port; killed at the end if it is still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "epp", "--host", "127.0.0.1", "--port", "0", "--grpc-health-port",
        "0", "--metrics-port", "0", "--endpoints", "127.0.0.1:9", "--model", "m", "--plaintext", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if (m := READY.search(line)) is None:
            proc.kill()  # (its stderr ends with it: read whole, not waited on while it runs)
            raise AssertionError(f"not ready: {line!r} {(await proc.stderr.read()).decode()[-2000:]}")
        yield proc, int(m[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def routed_stream(grpc_port: int, rpc_timeout_s: float) -> AsyncIterator[Exchange]:
    """An ext_proc stream to ``grpc_port`` routed to the one endpoint, its answer's head sent (an answer
    still streaming); its channel closed at the end."""
    ch = channel(f"127.0.0.1:{grpc_port}")
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=rpc_timeout_s) as ex:
            assert (await ex.send_request(HEADERS, BODY)).destination == "127.0.0.1:9"
            await ex.send_response_headers(200, SSE, served="127.0.0.1:9")
            yield ex
    finally:
        await ch.close()
