"""rev-c29 F1: the --workers supervisor's ``check_pickers`` (IndexClaims(leaving=None)) accepts a reload in
which a changed pool takes an ``indexName`` in another mode while an UNCHANGED pool keeps that name in the
old mode. Every worker's ConfigReloader refuses the same reload (the unchanged pool's running picker holds
the name), so the supervisor reports it checked and sends a config every worker refuses (its docstring:
"so no worker is sent one it would refuse"). Fails on main 22c8a4f2."""

from __future__ import annotations

import uuid

import pytest
import yaml

from gateway.conftest import make_config, make_pools
from kvgate.gateway.reload import ConfigReloader, check_pickers
from kvgate.gateway.server import GatewayServer

pytestmark = pytest.mark.asyncio
SCORER = "precise-prefix-cache-scorer"


def _precise(mode: str, index: str) -> dict:
    params = {"mode": mode, "eventsBind": False, "indexName": index}
    return {
        "plugins": [{"type": SCORER, "parameters": params}, {"type": "queue-scorer"}],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": SCORER}, {"pluginRef": "queue-scorer"}],
            }
        ],
    }


def _pools(pa: dict, pb: dict) -> list[dict]:
    return [
        {
            "name": "a",
            "endpoints": ["127.0.0.1:1001"],
            "models": ["ma"],
            "endpointPickerConfig": pa,
        },
        {
            "name": "b",
            "endpoints": ["127.0.0.1:1002"],
            "models": ["mb"],
            "endpointPickerConfig": pb,
        },
    ]


async def test_worker_refuses_and_supervisor_check_agrees(tmp_path):
    name = f"revc29-{uuid.uuid4().hex[:8]}"
    old = make_config([], extra={"pools": _pools(_precise("engine", name), _precise("engine", name))})
    new_pools = _pools(_precise("tokens", name), _precise("engine", name))
    new = make_config([], extra={"pools": new_pools})
    # A worker (one process, as each --workers worker runs): refused, pool b's running picker holds it.
    gw = GatewayServer(old, make_pools(old), scrape=False)
    await gw.start()
    try:
        f = tmp_path / "gw.yaml"
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        f.write_text(yaml.safe_dump({"listen": {"host": "127.0.0.1", "port": 0}, "pools": new_pools}))
        assert not await rl.areload()
    finally:
        await gw.stop(drain_timeout=0.2)
    # The supervisor's check of the same change must refuse it too.
    with pytest.raises(Exception, match=r"indexName|already exists"):
        check_pickers(old, new)
