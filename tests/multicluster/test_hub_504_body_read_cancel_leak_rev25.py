"""rev-fixes25 F2: the hub reads a cluster's JSON 504 body (<= 16 KiB, <= 2 s, fixqa25b cbcd8ce5) outside
``_attempt``'s ``except BaseException: given_up()`` guard. A client that leaves while that read waits
(a cluster that sent the 504 head and is slow with its body) cancels the handler: ``st.finished(token)`` is
never called, so the cluster's in-flight count stays up for good (and the response is not released).
Real HTTP on loopback: east is a raw socket answering a 504 JSON head with Content-Length 64 and no body."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import aiohttp
import pytest

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio


async def _until(ok: Callable[[], bool], end: float) -> None:
    loop = asyncio.get_running_loop()
    while not ok():
        if loop.time() >= end:
            return
        await asyncio.sleep(0.05)


async def test_client_leaving_during_the_504_body_read_releases_the_clusters_inflight() -> None:
    heads = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def east(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
        )
        await writer.drain()
        heads.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)  # the body never comes (the client leaves first)

    srv = await asyncio.start_server(east, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    gw = GlobalGateway(ClustersConfig((ClusterSpec("east", gateway=f"127.0.0.1:{port}", priority=0),)),
                       "active-passive", fetch=False, seed=1)  # fmt: skip
    await gw.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    try:
        st = gw.router.states["east"]
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gw.port}/v1/completions"
            task = asyncio.create_task(http.post(url, data=json.dumps({"model": "m", "prompt": "x"})))
            await asyncio.wait_for(heads.wait(), 30)
            assert st.inflight == 1
            task.cancel()  # the client leaves while the hub reads the 504's body
            with pytest.raises(asyncio.CancelledError):
                await task
        await _until(lambda: st.inflight == 0, loop.time() + 30)  # (the hub sees the close: cancels)
        assert st.inflight == 0, "the cluster's in-flight count leaked"
    finally:
        await gw.stop()
        for w in writers:
            w.close()
        srv.close()
