"""``kvgate serve --clusters``: a cluster whose connection is cut after its ``data: [DONE]`` (no chunked
terminator) gave a complete answer, ended as usual (fixdoors16); the cut is not silent (review s17-doors
I1): counted in ``kvgate_multicluster_streams_cut_after_done_total{cluster}`` (not in
``kvgate_multicluster_responses_cut_total``) and said at DEBUG. Fails before: no such counter."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson
import pytest

from gateway.sse_upstream import EV, SSE_HEAD, chunk, read_request
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio

DONE = b"data: [DONE]\n\n"


async def _cut_after_done(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(EV) + chunk(DONE))  # no terminating chunk: then the cut
        await writer.drain()
        await asyncio.sleep(0.1)
    finally:
        writer.transport.abort()


async def test_a_cluster_cut_after_done_is_counted_not_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kvgate.multicluster")
    server = await asyncio.start_server(_cut_after_done, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    gw = GlobalGateway(ClustersConfig((ClusterSpec("c1", gateway=address),)), "round-robin", fetch=False)
    await gw.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 5})
            async with s.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=body) as r:
                assert r.status == 200
                raw = await asyncio.wait_for(r.read(), 30)
        assert raw == EV + DONE
        reg = gw.metrics.registry
        c1 = {"cluster": "c1"}
        assert reg.get_sample_value("kvgate_multicluster_streams_cut_after_done_total", c1) == 1
        assert not reg.get_sample_value("kvgate_multicluster_responses_cut_total", {"cluster": "c1"})
        assert any("cut after its [DONE]" in rec.getMessage() for rec in caplog.records)
    finally:
        await gw.stop()
        server.close()
