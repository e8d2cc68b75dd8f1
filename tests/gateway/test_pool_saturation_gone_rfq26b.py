"""s26-rev-fixqa26b F2: ``inference_extension_flow_control_pool_saturation`` after a reload stops a pool's
flow-controlled picker (005156aa, flowcontrol/metrics.py:_PoolSaturation / ``_SATURATIONS`` WeakSet).

The series lived as long as the old picker's ``FlowMetrics``, which sits in reference cycles (the flow
controller and its director): it went only when the cyclic GC's oldest generation ran, which on a
long-lived server can be minutes or never. Meanwhile the series kept being computed from the old picker
-- at 1.0 ("fully saturated") in the review's repro, what a KEDA/autoscaler rule on this gauge reads as
"scale up" -- for a pool that is no longer flow-controlled. The reload's swap now removes it at once.
Deterministic by pausing the cycle collector (the state a long-lived gen-2 director is in between full
collections).
(The review's test dropped a bare Director; kvgate serve cannot remove a pool live -- a restart -- so the
reload that turns flow control off is where a pool's series must go.)"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from gateway.conftest import make_pools
from kvgate.config.gateway import parse_gateway_config
from kvgate.flowcontrol import metrics
from kvgate.gateway.reload import ConfigReloader

POOL = "rfq26b-reloaded-pool"
QUEUE = {"type": "queue-scorer"}


def _doc(flow: bool) -> dict[str, Any]:
    picker: dict[str, Any] = {
        "plugins": [QUEUE],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    if flow:
        picker["featureGates"] = ["flowControl"]
    pool = {"name": POOL, "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}


def _series() -> list[str]:
    return [
        line
        for line in generate_latest(REGISTRY).decode().splitlines()
        if line.startswith("inference_extension_flow_control_pool_saturation{") and POOL in line
    ]


@pytest.fixture
def no_cycle_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        gc.collect()


@pytest.mark.parametrize("flow_after", [False, True])
def test_a_reload_swaps_out_the_old_pickers_saturation_series(
    tmp_path: Path, no_cycle_gc: None, flow_after: bool
) -> None:
    f = tmp_path / "gw.yaml"
    doc = _doc(flow=True)
    f.write_text(yaml.safe_dump(doc))
    cfg = parse_gateway_config(doc)
    pools = make_pools(cfg)
    rl = ConfigReloader(str(f), cfg, pools)
    assert len(_series()) == 1
    new = _doc(flow=flow_after)
    new["pools"][0]["endpointPickerConfig"]["plugins"].append({"type": "kv-cache-utilization-scorer"})
    new["pools"][0]["endpointPickerConfig"]["schedulingProfiles"][0]["plugins"].append(
        {"pluginRef": "kv-cache-utilization-scorer"}
    )
    f.write_text(yaml.safe_dump(new))
    assert rl.reload()
    assert (pools[0].director.flow is not None) == flow_after
    # Flow control off: the pool shows none; on: one series, the new picker's (the old one's is gone).
    assert len(_series()) == (1 if flow_after else 0), _series()
    assert [fm.pool for fm in metrics._SATURATIONS].count(POOL) == (1 if flow_after else 0)
