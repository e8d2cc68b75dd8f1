"""qa32b Q6: ``kvgate_epp_pick_duration_seconds`` ("Time inside the picker per request") was timed in
``Session._schedule`` from its own start. Without flow control the pick (``director.pick``) runs inside that
window; with flow control the pick runs inside ``Director.admit`` (the queue's dispatcher) and ``_schedule``
is handed the result, so the histogram timed only the bookkeeping after it: a slow picker read as
microseconds. Now the pick's own time (``PickResult.seconds``) is added. ``[True]`` fails on 0d8d2049;
``[False]`` is the control (passes there)."""

from __future__ import annotations

import time

import orjson
import pytest

from extproc.flow_epp import epp_serving, flow_control_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.testing import Exchange

PICK_S = 0.05  # each pick made this slow on purpose
FLOW_CONTROL = flow_control_config(64)


@pytest.mark.parametrize("flow_control", [False, True])
async def test_pick_duration_includes_the_pick(flow_control: bool) -> None:
    store = EndpointStore.from_addresses(["127.0.0.7:8000", "127.0.0.8:8000"])
    director = build_epp_director(FLOW_CONTROL if flow_control else None, store, policy="kvgate")
    assert (director.flow is not None) == flow_control
    inner = director._pick

    def slow_pick(*args, **kwargs):
        time.sleep(PICK_S)
        return inner(*args, **kwargs)

    director._pick = slow_pick  # type: ignore[method-assign]
    metrics = EppMetrics()
    admit = director.admit if flow_control else None
    async with epp_serving(director, store, metrics, admit) as stub, Exchange(stub) as ex:
        out = await ex.send_request(
            {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"},
            orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4}),
        )
    assert out.destination
    total = metrics.registry.get_sample_value("kvgate_epp_pick_duration_seconds_sum")
    # (a lower bound only: a loaded machine makes the pick slower, never faster than its sleep)
    assert total is not None and total >= PICK_S * 0.9, f"a {PICK_S}s pick timed as {total}s"
