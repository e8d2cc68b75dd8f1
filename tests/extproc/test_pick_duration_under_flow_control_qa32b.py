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
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel

PICK_S = 0.05  # each pick made this slow on purpose
FLOW_CONTROL = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "featureGates": ["flowControl"],
    # (counts the EPP's own in-flight requests: no scraped metrics needed for the gate to open)
    "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 64}},
    "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"}],
    "schedulingProfiles": [
        {"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}
    ],
}


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
    ctx = SessionContext(
        director, AddressIndex(store), clock=time.monotonic, observer=metrics,
        admit=director.admit if flow_control else None,
    )  # fmt: skip
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch)) as ex:
            out = await ex.send_request(
                {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"},
                orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4}),
            )
        assert out.destination
    finally:
        await ch.close()
        await server.stop(0)
    total = metrics.registry.get_sample_value("kvgate_epp_pick_duration_seconds_sum")
    # (a lower bound only: a loaded machine makes the pick slower, never faster than its sleep)
    assert total is not None and total >= PICK_S * 0.9, f"a {PICK_S}s pick timed as {total}s"
