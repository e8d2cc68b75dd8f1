"""Fixtures shared by the global gateway's front tests (``test_error_counts.py``,
``test_front_hardening.py``): loopback backends and global gateways in Parent mode, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.backend import Backend
from kvgate.httpfront.server import FrontLimits
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


@pytest.fixture
async def pods() -> AsyncIterator[Callable[..., Any]]:
    started: list[Backend] = []

    async def make(**kw: Any) -> Backend:
        b = await Backend(f"pod{len(started)}", **kw).start()
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Any]]:
    running: list[GlobalGateway] = []

    async def make(gateways: list[str], **limits: Any) -> GlobalGateway:
        clusters = tuple(ClusterSpec(f"c{i}", gateway=g) for i, g in enumerate(gateways))  # Parent mode
        gw = GlobalGateway(ClustersConfig(clusters), "round-robin", fetch=False, limits=FrontLimits(**limits))
        await gw.start("127.0.0.1", 0)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        await gw.stop()
