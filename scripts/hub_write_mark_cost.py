"""What the hub's write mark (``GlobalRouter._post``'s ``_MarkedRequest``; review s26-rev-gw26 F2) costs
per request on this machine: the router's send of a non-streamed request to a loopback pod and the read of
its small JSON answer, through the router's session as it is (``marked``), the same session without the
mark (``plain``), and with aiohttp's ``on_request_headers_sent`` trace instead (``trace``: the alternative
not taken), in one process.

    PYTHONPATH=src python scripts/hub_write_mark_cost.py [--n 5000] [--seed 1]

CPU time (``process_time``, the pod's side included: the same in all) per request, median and mean; the
kinds take turns request by request in a shuffled order (a load that drifts meanwhile falls on each
alike); a request bound (``limits.requestTimeoutSeconds``, 30 s) on each, as the hub's. On stdlib
asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import aiohttp
from aiohttp import web

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.router import PARENT, Deadline, GlobalRouter

BODY = b'{"model": "m", "prompt": "x", "max_tokens": 1}'
ANSWER = b'{"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": "y"}]}'


async def _traced(_session: object, ctx: Any, _params: object) -> None:
    """The trace's hook (its mark would ride on ``trace_request_ctx``; ``_post`` passes none: the
    signals' cost is the same)."""
    if ctx.trace_request_ctx is not None:
        ctx.trace_request_ctx.written = True


async def main(n: int, seed: int) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    router = GlobalRouter(ClustersConfig((ClusterSpec("a", gateway=f"127.0.0.1:{port}"),)), "round-robin")
    await router.start()
    marked = router._session
    assert marked is not None and marked._request_class is not aiohttp.ClientRequest, "no write mark here"

    def session(**kw: Any) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, force_close=True, socket_factory=router._socket)
        return aiohttp.ClientSession(connector=connector, auto_decompress=False, **kw)

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_traced)
    sessions = {"plain": session(), "marked": marked, "trace": session(trace_configs=[trace])}
    st = router.states["a"]
    url = f"http://127.0.0.1:{port}/v1/completions"
    fwd = {"content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=1.0, sock_read=300)
    loop = asyncio.get_running_loop()
    got: dict[str, list[float]] = {k: [] for k in sessions}
    rng = random.Random(seed)
    try:
        for _ in range(n):
            kinds = list(sessions)
            rng.shuffle(kinds)
            for kind in kinds:
                router._session = sessions[kind]
                t0 = time.process_time()
                deadline = Deadline.after(loop.time(), 30.0)
                resp = await router._post(st, PARENT, url, BODY, fwd, timeout, False, deadline=deadline)
                await resp.read()
                resp.release()
                got[kind].append((time.process_time() - t0) * 1e6)
    finally:
        router._session = marked
        for kind in ("plain", "trace"):
            await sessions[kind].close()
        await router.close()
        await runner.cleanup()
    for kind, us in got.items():
        med, mean = statistics.median(us), statistics.fmean(us)
        print(f"{kind:7s} median {med:6.1f} us, mean {mean:6.1f} us CPU/request")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    asyncio.run(main(a.n, a.seed))
