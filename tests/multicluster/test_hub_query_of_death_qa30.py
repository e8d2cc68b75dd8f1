"""qa30 Q6: ``kvgate serve --clusters`` has no "query of death" rule. A request that every model server
answers 500 (an engine error on that input; vLLM answers those 500) is failed over to every cluster the
policy names (at most 3), each cluster backs off (1 s, doubling to 8 s), and the client gets a retryable
``503 every cluster failed (last: status 500)``, which the OpenAI SDKs retry (2 more times by default),
each retry running it on every cluster again. ``kvgate serve`` (docs/gateway.md, "A 500 that another
endpoint also answered the same request is the request's fault", s17-qa M4) runs such a request on two
servers, passes the second 500 through and charges nobody. In Parent mode each cluster's ``kvgate serve``
applies its own rule, so one request ran 4 times on 2 clusters (scratch run).

Fails on main 7f4e076b (and 6d96a979): 503, run on all 3 clusters, all 3 backing off."""

from __future__ import annotations

import contextlib

import aiohttp
import orjson

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClusterSpec
from multicluster.conftest import round_robin_epp

POISON = orjson.dumps({"model": "m", "prompt": "POISON input", "max_tokens": 2})


async def test_a_request_every_cluster_answers_500_is_the_clients_500_and_runs_twice_at_most(global_gateway):
    pods = [await Backend(f"pod{i}").start() for i in range(3)]
    for pod in pods:
        pod.poison = "POISON"  # answered 500 by every server; any other prompt is served
    try:
        async with contextlib.AsyncExitStack() as stack:
            ports = [(await stack.enter_async_context(round_robin_epp([p.address])))[1] for p in pods]
            hub = await global_gateway(
                *(ClusterSpec(f"c{i}", epp=f"127.0.0.1:{port}") for i, port in enumerate(ports))
            )
            async with aiohttp.ClientSession() as s:
                async with s.post(f"http://127.0.0.1:{hub.port}/v1/completions", data=POISON) as r:
                    status, text = r.status, await r.text()
                async with s.get(f"http://127.0.0.1:{hub.port}/v1/clusters") as r:
                    clusters = orjson.loads(await r.read())
            runs = sum(p.poisoned for p in pods)
            backing_off = [c["name"] for c in clusters if c["backing_off"]]
            assert (status, runs) == (500, 2), (status, text, runs)
            assert not backing_off, backing_off
            # A 500 that another server answers otherwise is the first server's own: its cluster backs off
            # (charged at the request's end, not at its 500).
            pods[0].mode = "error500"
            seen = len(pods[0].received)
            async with aiohttp.ClientSession() as s:
                for i in range(6):  # (round-robin: c0 is tried within 3)
                    body = orjson.dumps({"model": "m", "prompt": f"hello {i}", "max_tokens": 2})
                    async with s.post(f"http://127.0.0.1:{hub.port}/v1/completions", data=body) as r:
                        assert r.status == 200, await r.text()
                    if len(pods[0].received) > seen:
                        break
            assert len(pods[0].received) > seen
            assert hub.router.states["c0"].backoff_s > 0
    finally:
        for pod in pods:
            await pod.stop()
