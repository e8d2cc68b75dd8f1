"""The hub's InferencePool watches of its member clusters get the EPP's staleness policy (session 15):
they were in the age gauge but nothing was logged when a member's API server was lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.staleness import AGE_METRIC
from kvgate.k8s.stalepolicy import StalenessPolicy
from kvgate.multicluster.imports import ImportController, Member

from .kube_objects import inference_pool

NAME = "inferencepools.inference.networking.k8s.io/v1 of cluster east"


async def _until(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _said(caplog: pytest.LogCaptureFixture, level: int, text: str) -> bool:
    return any(r.levelno == level and text in r.getMessage() for r in caplog.records)


async def test_a_member_whose_api_server_is_lost_is_logged_stale_then_recovered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fails before: no monitor on the import controller's reflectors (and one unnamed member: the log and
    the gauge could not say which cluster)."""
    caplog.set_level(logging.INFO, logger="kvgate.k8s.staleness")
    async with ApiServerDouble(bookmark_interval=0.2) as east_d:
        east_d.create(inference_pool("llama", "10.1.0.2:8080", exported=True))
        client = await KubeClient.connect(server=east_d.url)
        now = [0.0]
        policy = StalenessPolicy(stale_after_s=120.0)
        members = [Member("east", client, rtt_ms=5)]
        ctl = ImportController(None, members, writes=False, staleness=policy, clock=lambda: now[0])
        await ctl.start()
        try:
            await _until(lambda: bool(ctl.exported))
            assert REGISTRY.get_sample_value(AGE_METRIC, {"name": NAME}) is not None
            await east_d.go_away()
            east = ctl._reflectors[0]
            await _until(lambda: east.error is not None)  # (whatever was in flight at the cut, read)
            now[0] = 400.0
            await _until(lambda: _said(caplog, logging.WARNING, f"reflector {NAME}: not in sync"))
            assert ctl.exported  # the member's exports are kept as last read
            await east_d.come_back()
            await _until(
                lambda: _said(caplog, logging.INFO, f"reflector {NAME}: in sync with the API server again")
            )
        finally:
            await ctl.stop()
            await client.close()
