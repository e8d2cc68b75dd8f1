"""qa30 Q8: ``kvgate serve --clusters`` hands a stream to the client at the cluster's response head, not
at its first body byte. In Endpoint mode the hub talks to the pod itself, and vLLM sends a stream's head
at once, before the prefill (docs/gateway.md "Held head": "sglang-router and vLLM send the head at
once"); so does an Envoy cluster gateway in Parent mode. A pod that dies during the prefill (a crash, an
OOM kill, a node lost) then gives the client ``200`` and ``cluster c0 cut the stream``, no token, while
another cluster was idle: nothing but a head had reached the client. ``kvgate serve`` holds the head until
the upstream's first body byte for exactly this and retries elsewhere (docs/gateway.md, "A stream's
response head is held until the upstream's first body byte"; decided in session 15).

Fails on main 7f4e076b (and 6d96a979): the request whose pod died after its head ends with the cut event.
With ``ping`` the pod sends an SSE comment (``: ping``, a keep-alive) before it dies: no progress, held
with the head as ``kvgate serve`` holds it since qa30 Q4 (fails on 79d23823: the comment went out)."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
import pytest

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClusterSpec
from multicluster.conftest import round_robin_epp

STREAM = orjson.dumps({"model": "m", "prompt": "hello there", "max_tokens": 3, "stream": True})


class HeadThenDie:
    """A pod that reads the request, sends a stream's head (as vLLM does before its prefill), then dies."""

    def __init__(self, ping: bool) -> None:
        self.hits = 0
        self.ping = ping

    async def start(self) -> HeadThenDie:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            n = None
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            if n is not None:
                await r.readexactly(n)
            else:  # (chunked)
                await r.readuntil(b"0\r\n\r\n")
            self.hits += 1
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            if self.ping:
                w.write(b"8\r\n: ping\n\n\r\n")  # (one chunk: the comment, 8 bytes)
            await w.drain()
            await asyncio.sleep(0.2)  # the prefill, then the crash
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def stop(self) -> None:
        self.server.close()


@pytest.mark.parametrize("ping", [False, True])
async def test_a_pod_that_dies_after_its_stream_head_before_any_event_is_failed_over(global_gateway, ping):
    bad = await HeadThenDie(ping).start()
    good = await Backend("good").start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            _, p0 = await stack.enter_async_context(round_robin_epp([bad.address]))
            _, p1 = await stack.enter_async_context(round_robin_epp([good.address]))
            hub = await global_gateway(
                ClusterSpec("c0", epp=f"127.0.0.1:{p0}"), ClusterSpec("c1", epp=f"127.0.0.1:{p1}")
            )
            answers = []
            async with aiohttp.ClientSession() as s:
                for _ in range(4):  # until one request reached the dying pod first
                    async with s.post(f"http://127.0.0.1:{hub.port}/v1/completions", data=STREAM) as r:
                        answers.append((r.status, r.headers.get("x-kvgate-cluster"), await r.read()))
                    if bad.hits:
                        break
            assert bad.hits
            for status, cluster, raw in answers:
                assert status == 200
                assert b"cut the stream" not in raw, (cluster, raw)
                assert raw.endswith(b"data: [DONE]\n\n"), (cluster, raw)
    finally:
        await bad.stop()
        await good.stop()
