"""rev-c28 F3: a reload that moves an address from one pool to another keeps its connections.

``ConfigReloader.apply`` syncs the pools one by one: with p: [a], q: [b] -> p: [b], q: [a], p's sync
removed ``a`` while q did not hold it yet, and the proxy's store listener retired it (its idle
connections closed) a moment before q added it. The "in no pool" check now runs a loop turn later.
Fails on abe73f48 (1 idle connection before, 0 after).
"""

from __future__ import annotations

import asyncio

import aiohttp

from kvgate.gateway.reload import ConfigReloader

from ._keepalive_upstreams import keepalive_backend, pools_doc, started_gateway, write_doc

WAIT_S = 30.0


def _doc(p: str, q: str) -> dict:
    return pools_doc(("p", [p], "m"), ("q", [q], "m2"))


async def test_an_address_moved_between_pools_by_a_reload_keeps_its_connections(tmp_path) -> None:
    (ra, a), (rb, b) = await keepalive_backend(), await keepalive_backend()
    f = tmp_path / "gw.yaml"
    cfg, pools, gw = await started_gateway(write_doc(f, _doc(a, b)))
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{gw.port}/v1/completions"
            body = {"model": "m", "prompt": "x", "max_tokens": 1}
            async with s.post(url, json=body, timeout=aiohttp.ClientTimeout(total=WAIT_S)) as r:
                assert r.status == 200, await r.text()
                await r.read()
        assert gw.proxy is not None
        kept = list(gw.proxy.upstream._idle.get(a, ()))
        assert kept
        write_doc(f, _doc(b, a))  # a moves from p to q, b from q to p
        assert ConfigReloader(str(f), cfg, pools, poll_s=None, server=gw).reload()
        assert a in pools[1].store and b in pools[0].store
        for _ in range(5):
            await asyncio.sleep(0.01)  # the deferred "in no pool" check has run
        assert gw.proxy.upstream._idle.get(a) == kept
        assert not any(c.closed for c in kept)
        assert a not in gw.proxy.upstream._retired and b not in gw.proxy.upstream._retired
    finally:
        await gw.stop(drain_timeout=1.0)
        await ra.cleanup()
        await rb.cleanup()
