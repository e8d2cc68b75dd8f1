"""Fixtures for tests that need simulated model servers (copy ``sim_fleet`` into other areas as needed).

``sim_fleet`` is a factory: ``fleet = await sim_fleet(2, profile="tiny", max_num_seqs=4)`` starts real
replicas on 127.0.0.1 ephemeral ports; all are closed when the test ends. The ``tiny`` profile has ~1 ms
steps, a 2k-token KV cache and max_num_seqs 32, so tests stay fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvgate.sim.fleet import SimFleet
from kvgate.sim.tokenizer import get_tokenizer

FleetFactory = Callable[..., Awaitable[SimFleet]]


@pytest.fixture(scope="session", autouse=True)
def _sim_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # One tokenizer directory per test session, never the user's ~/.cache.
    path = tmp_path_factory.mktemp("kvgate-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("KVGATE_CACHE_DIR", str(path))
    get_tokenizer.cache_clear()
    yield path
    mp.undo()
    get_tokenizer.cache_clear()


@pytest.fixture
async def sim_fleet() -> AsyncIterator[FleetFactory]:
    fleets: list[SimFleet] = []

    async def make(replicas: int = 1, **options: Any) -> SimFleet:
        options.setdefault("profile", "tiny")
        fleet = SimFleet(replicas, **options)
        fleets.append(fleet)
        await fleet.start()
        return fleet

    yield make
    for fleet in fleets:
        await fleet.close()
