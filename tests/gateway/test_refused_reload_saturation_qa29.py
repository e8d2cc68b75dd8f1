"""A refused reload leaves /metrics as it was (review s29-qa29 Q3): ``ConfigReloader._plan`` builds every
changed pool's new Director before anything changes, and building one with flow control puts its
``FlowMetrics`` on the process-wide pool saturation gauge (``watch_saturation``, "the newest per pool
shown"). A reload then refused (another pool's picker invalid, a KV-event source that does not start)
dropped the built Director's store listeners only: its series stayed until the cycle collector freed it
(``kvgate serve`` freezes gc and raises its thresholds), so a pool running no flow control showed a
saturation series, and one running it showed the refused picker's detector. Now ``_drop`` unwatches the
saturation of each Director it drops, and the ``--workers`` supervisor's ``check_pickers`` of the ones
it builds to check.

Fails on be00955b: the series for pool ``qa29-a`` appears after the refused reload."""

from __future__ import annotations

import gc

import yaml
from prometheus_client import REGISTRY

from gateway.conftest import make_config, make_pools
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.reload import ConfigReloader, check_pickers
from kvgate.gateway.server import GatewayServer

SAT = "inference_extension_flow_control_pool_saturation"


def _picker(flow: bool = False, bad: bool = False) -> dict:
    doc: dict = {
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    if flow:
        doc["featureGates"] = ["flowControl"]
        doc["saturationDetector"] = {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}}
    if bad:
        doc["plugins"].append({"type": "no-such-plugin"})
    return doc


def _doc(pa: dict, pb: dict) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {"name": "qa29-a", "endpoints": ["127.0.0.1:1001"], "models": ["ma"], "endpointPickerConfig": pa},
            {"name": "qa29-b", "endpoints": ["127.0.0.1:1002"], "models": ["mb"], "endpointPickerConfig": pb},
        ],
    }


def _saturation_pools() -> set[str]:
    return {s.labels["inference_pool"] for m in REGISTRY.collect() if m.name == SAT for s in m.samples}


async def test_a_refused_reload_leaves_no_saturation_series_of_the_picker_it_built(tmp_path):
    doc = _doc(_picker(), _picker())
    cfg = make_config([], extra={"pools": doc["pools"]})
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    gc_was = gc.isenabled()
    gc.disable()  # (as kvgate serve's frozen, high-threshold gc: the dropped Director is not freed at once)
    try:
        assert "qa29-a" not in _saturation_pools()
        f = tmp_path / "gw.yaml"
        f.write_text(yaml.safe_dump(_doc(_picker(flow=True), _picker(bad=True))))
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        assert not await rl.areload()  # refused: pool b's picker is invalid
        assert gw.pools[0].director.flow is None  # pool a still runs its picker without flow control
        assert "qa29-a" not in _saturation_pools(), (
            "a refused reload left the saturation series of the flow controller it built for pool qa29-a"
        )
    finally:
        if gc_was:
            gc.enable()
        await gw.stop(drain_timeout=0.5)


def test_the_supervisors_picker_check_leaves_no_saturation_series():
    old = parse_gateway_config(_doc(_picker(), _picker()))
    new = parse_gateway_config(_doc(_picker(flow=True), _picker()))
    gc_was = gc.isenabled()
    gc.disable()
    try:
        assert check_pickers(old, new) == ["qa29-a"]
        assert "qa29-a" not in _saturation_pools()
    finally:
        if gc_was:
            gc.enable()
