"""qa31 Q4: ``kvgate serve --config`` with two watched pools, A and B. Delete InferencePool A (a model
retired, or a typo in one pool's name, or RBAC missing in one pool's namespace): ``/readyz`` answers 503
(``InferencePool default/a not found ...``) although pool B's pod is healthy and serves. A readiness probe on
``/readyz`` then takes the whole gateway, and pool B's traffic with it, out of its Service.

docs/gateway.md's admin table: ``/readyz`` is "200 when at least one endpoint is healthy and the gateway is
not draining"; a static pool whose servers all died leaves the gateway ready while another pool serves, but
``GatewayServer._readyz`` (src/kvgate/gateway/server.py:288-290) answers 503 on the first watched pool with
any ``KubePool.problem()``. Fails on main 691110b3."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from k8s.pool_scope_kit import add_pod, pool_obj, serving, until
from k8s.pool_scope_kit import chat_status as chat
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble

sim = pytest.importorskip("kvgate.sim.server")


async def test_one_watched_pool_deleted_leaves_the_gateway_ready_while_another_serves(tmp_path: Path) -> None:
    rep_a = sim.Replica(sim.ReplicaConfig(model="a-model", time_scale=50.0, seed=1), index=0)
    rep_b = sim.Replica(sim.ReplicaConfig(model="b-model", time_scale=50.0, seed=2), index=1)
    await rep_a.start()
    await rep_b.start()
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool_obj("qa31q4a", labels={"app": "a"}, ports=(rep_a.port,)))
        d.create(pool_obj("qa31q4b", labels={"app": "b"}, ports=(rep_b.port,)))
        add_pod(d, "pa", "127.0.0.1", labels={"app": "a"})
        add_pod(d, "pb", "127.0.0.1", labels={"app": "b"})
        f = tmp_path / "gw.yaml"
        f.write_text(
            "pools:\n"
            "- name: qa31q4a\n  models: [a-model]\n  inferencePool: {name: qa31q4a, namespace: default}\n"
            "- name: qa31q4b\n  models: [b-model]\n  inferencePool: {name: qa31q4b, namespace: default}\n"
        )
        statuses: list[tuple[int, str]] = []
        async with serving(d, "--config", str(f), "--policy", "round-robin", scrape=True) as (gw, url):

            async def readyz(http: aiohttp.ClientSession) -> int:
                async with http.get(f"{url}/readyz") as r:
                    statuses.append((r.status, await r.text()))
                    return r.status

            async with aiohttp.ClientSession() as http:
                await until(lambda: all(len(p.store) == 1 for p in gw.pools), what="both pools' pods")
                for _ in range(450):  # (ready once scraped)
                    if await readyz(http) == 200:
                        break
                    await asyncio.sleep(0.1)
                assert statuses[-1][0] == 200, f"not ready at the start: {statuses[-1]}"
                d.delete(R.INFERENCE_POOL, "qa31q4a", "default")
                await until(lambda: len(gw.pools[0].store) == 0, what="pool a emptied")
                assert await chat(http, url, "b-model") == 200  # pool b serves
                assert await readyz(http) == 200, f"one pool gone made the gateway unready: {statuses[-1]}"
                assert "pool qa31q4a: InferencePool default/qa31q4a not found" in statuses[-1][1], statuses[
                    -1
                ]
    await rep_a.stop()
    await rep_b.stop()
