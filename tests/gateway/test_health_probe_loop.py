"""The passive-health probe loop sleeps while no endpoint is ejected (issue #16: each wake-up of the event
loop costs CPU on a busy machine; the loop woke 4 times a second to find nothing to probe)."""

from __future__ import annotations

import asyncio
from typing import Any

from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.endpoint import Endpoint
from kvgate.gateway.health import HealthTracker


async def test_probe_loop_idle_until_an_ejection_then_probes_it_back() -> None:
    loop = asyncio.get_running_loop()
    tracker = HealthTracker(HealthConfig(eject_after_failures=1, eject_base_s=0.05), loop.time)
    eps = [Endpoint(address="127.0.0.1:1", pool="p"), Endpoint(address="127.0.0.1:2", pool="p")]
    looks = 0

    def endpoints() -> list[Endpoint]:
        nonlocal looks
        looks += 1
        return eps

    probed: list[str] = []

    async def probe(session: Any, ep: Endpoint) -> bool:
        probed.append(ep.address)
        return True

    tracker.probe = probe  # type: ignore[method-assign]
    task = asyncio.create_task(tracker.run(None, endpoints, interval_s=0.01))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.3)  # 30 intervals, every endpoint healthy
        assert looks <= 2, f"the loop woke {looks} times with nothing ejected"
        assert tracker.failure(eps[1], eps)  # ejected: the loop wakes, probes after the back-off
        for _ in range(200):
            await asyncio.sleep(0.01)
            if eps[1].healthy:
                break
        assert eps[1].healthy and probed == ["127.0.0.1:2"]
        settled = looks
        await asyncio.sleep(0.3)  # back to idle once nothing is ejected
        assert looks - settled <= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
