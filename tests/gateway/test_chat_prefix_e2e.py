"""Chat requests are prefix-scored: chats sharing a long system prompt land on the same replica
(kvgate serve, default policy, live scraping, simulated vLLM replicas)."""

from __future__ import annotations

import aiohttp

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.sim.server import Replica, ReplicaConfig


def _served(replicas: list[Replica]) -> list[int]:
    return [sum(r.counters.finished.values()) for r in replicas]


async def test_chats_sharing_a_system_prompt_land_on_the_same_replica() -> None:
    replicas = [Replica(ReplicaConfig(model="sim-model", time_scale=50.0, seed=i), index=i) for i in range(3)]
    for r in replicas:
        await r.start()
    try:
        cfg = make_config([f"127.0.0.1:{r.port}" for r in replicas], models=("sim-model",), policy="kvgate")
        async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as http:
            url = base_url(gw) + "/v1/chat/completions"
            homes: dict[int, set[int]] = {}
            for turn in range(3):
                for group in range(3):
                    system = f"You are assistant number {group}. " + f"Rule {group}: be brief. " * 120
                    body = {
                        "model": "sim-model",
                        "messages": [
                            {"role": "system", "content": system},
                            {"role": "user", "content": f"question {turn}"},
                        ],
                        "max_tokens": 2,
                    }
                    before = _served(replicas)
                    async with http.post(url, json=body) as resp:
                        assert resp.status == 200, await resp.text()
                        await resp.read()
                    after = _served(replicas)
                    served = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]
                    assert len(served) == 1
                    homes.setdefault(group, set()).add(served[0])
            # Each group's chats all went to one replica (its system prompt's holder).
            assert all(len(h) == 1 for h in homes.values()), homes
    finally:
        for r in replicas:
            await r.stop()
