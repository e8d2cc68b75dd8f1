"""Session-25 closing note: "A hub behind a hub: a hub's own ``request_timeout`` 504 may come after the
request was sent (a double run)". A hub moves on after a cluster's 504 only when its code is
``request_timeout`` (kvgate's own: "no attempt of it still runs there", review s25-rev-fixqa25 R4). But a
hub (``serve --clusters``) answered its bound passing with that code even when a cluster held the written
request, head pending: an outer hub in front of it read "nothing runs there" and sent the request to its
next cluster, while the inner hub's cluster may still run it. ``kvgate serve`` names that case
``upstream_timeout`` ("X timed out: no answer within requestTimeoutSeconds"); the hub now does too, so the
outer hub passes the 504 on and backs the inner hub off. A bound that passes before anything was written
(an EPP's pick that outlasted it, or between clusters whose attempts each ended) is still
``request_timeout`` and still fails over (``tests/multicluster/test_hub_queue_timeout_504_fails_over.py``).
Fails on main 6c4d40fa: the outer hub's 200 from west, west's pod sent the request.

In process, real HTTP on loopback: outer hub -> (inner hub, priority 0 | west's pod, priority 1), inner hub
(``requestTimeoutSeconds: 0.5``) -> a pod that never answers."""

from __future__ import annotations

from typing import Any

import aiohttp

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

BODY = b'{"model":"m","prompt":"x","max_tokens":1}'


async def test_an_inner_hubs_504_after_it_sent_the_request_is_not_resent(pods: Any) -> None:
    deep, west = await pods(), await pods()
    deep.mode = "hang"  # (takes the request, sends no head)
    inner = GlobalGateway(
        ClustersConfig((ClusterSpec("deep", gateway=deep.address),), request_timeout_s=0.5),
        "round-robin", fetch=False, seed=1,
    )  # fmt: skip
    await inner.start("127.0.0.1", 0)
    outer = GlobalGateway(
        ClustersConfig((ClusterSpec("inner", gateway=f"127.0.0.1:{inner.port}", priority=0),
                        ClusterSpec("west", gateway=west.address, priority=1))),
        "active-passive", fetch=False, seed=1,
    )  # fmt: skip
    await outer.start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{outer.port}/v1/completions"
        async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
            got = r.status, r.headers.get("x-kvgate-cluster"), await r.json()
        assert len(deep.received) == 1  # (the inner hub wrote it: deep's model server may run it)
        # FAILS on main 6c4d40fa: (200, 'west'): the outer hub read "request_timeout" as nothing written
        assert not west.received, f"west's pod was sent the request the inner hub had sent on: {got}"
        assert got[:2] == (504, "inner"), got
        err = got[2]["error"]
        assert err["code"] == "upstream_timeout", err
        assert "requestTimeoutSeconds" in err["message"], err
        assert not outer.router.states["inner"].available(outer.clock()), "the inner hub not backed off"
    finally:
        await outer.stop()
        await inner.stop()
