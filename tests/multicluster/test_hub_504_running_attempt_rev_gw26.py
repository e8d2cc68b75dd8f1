"""Review s26-rev-gw26: the hub's 504 code at its bound (commit 28037c2a) on a path its test missed.

F1: a streamed request is sent to cluster A, which sends no head within ``head_timeout_s`` (``NoHead``:
the attempt is marked ``running``, A may still run it); the hub moves on to cluster B (Endpoint mode),
whose EPP's pick outlasts the bound: ``PastDeadline(sent_at=None)``, and ``route`` names the 504
``request_timeout`` from that last attempt alone, ignoring A's running one (the loop-top check two lines
above does look at ``running``). An outer hub reads "nothing runs there" and sends the request to its
next cluster: the double run gw26 set out to remove.

Real HTTP and gRPC on loopback."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.test_epp_stall import _scripted, _StallingEpp


async def _post(port: int, stream: bool) -> tuple[int, str | None, dict[str, Any] | bytes]:
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1, "stream": stream})
    url = f"http://127.0.0.1:{port}/v1/completions"
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.post(url, data=body) as r:
        raw = await r.read()
        got: dict[str, Any] | bytes = orjson.loads(raw) if r.status != 200 else raw
        return r.status, r.headers.get("x-kvgate-cluster"), got


async def test_f1_running_attempt_then_a_pick_past_the_bound_is_not_request_timeout(pods: Any) -> None:
    deep, west, never = await pods(), await pods(), await pods()
    deep.mode = "hang"  # (takes the request, sends no head)
    epp = _StallingEpp(never.address, "pick")  # (reads the pick's messages, answers none)
    server, epp_port = await _scripted(epp)
    inner = GlobalGateway(
        ClustersConfig((ClusterSpec("a", gateway=deep.address, priority=0),
                        ClusterSpec("b", epp=f"127.0.0.1:{epp_port}", priority=1)),
                       head_timeout_s=0.3, epp_timeout_s=60.0, request_timeout_s=1.5),
        "active-passive", fetch=False, seed=1,
    )  # fmt: skip
    await inner.start("127.0.0.1", 0)
    outer = GlobalGateway(
        ClustersConfig((ClusterSpec("inner", gateway=f"127.0.0.1:{inner.port}", priority=0),
                        ClusterSpec("west", gateway=west.address, priority=1))),
        "active-passive", fetch=False, seed=1,
    )  # fmt: skip
    await outer.start("127.0.0.1", 0)
    try:
        got = await _post(outer.port, stream=True)
        assert len(deep.received) == 1  # (the inner hub wrote it to a: a's model server may run it)
        assert epp.stalled.is_set()  # (b's pick outlasted the bound)
        # failed at 5237a9d4: (200, 'west', ...): the inner hub's 504 said request_timeout, the outer
        # hub sent the request on to west while a holds it
        assert not west.received, f"west's pod was sent the request cluster a holds: {got[:2]}"
        assert got[:2] == (504, "inner"), got
        assert isinstance(got[2], dict) and got[2]["error"]["code"] == "upstream_timeout", got
    finally:
        await outer.stop()
        await inner.stop()
        await server.stop(0)
