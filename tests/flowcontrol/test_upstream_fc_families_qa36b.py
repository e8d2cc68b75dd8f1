"""qa36b-F2: llm-d-router's EPP (``pkg/epp/metrics``, docs/metrics.md) exports six flow-control families under
both its names (``inference_extension_`` and ``llm_d_epp_``) and ``plugin_duration_seconds``; kvgate exported
four and no plugin duration, so GIE's "Plugin Processing Latency" panel and llm-d's flow-control checks
(``..._dispatch_cycle_duration_seconds_count``, ``..._request_enqueue_duration_seconds_count``) read nothing.
Now: ``..._flow_control_request_enqueue_duration_seconds{fairness_id, priority, outcome}`` (an admission:
``Dispatched`` admitted at once, ``NotYetFinalized`` queued, ``RejectedCapacity`` refused at a full band),
``..._flow_control_dispatch_cycle_duration_seconds`` (each dispatch pass) and
``..._plugin_duration_seconds{extension_point, plugin_type, plugin_name}`` (each filter, scorer and picker
per pick), upstream's buckets. Both doors (``kvgate serve`` over HTTP, ``kvgate epp`` over real gRPC)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from flowcontrol.test_doors import Door, door_factory  # noqa: F401  (the fixture)

WAIT = 30.0
PREFIXES = ("inference_extension_", "llm_d_epp_")
FAMILIES = (
    "flow_control_queue_size",
    "flow_control_queue_bytes",
    "flow_control_pool_saturation",
    "flow_control_request_queue_duration_seconds",
    "flow_control_request_enqueue_duration_seconds",
    "flow_control_dispatch_cycle_duration_seconds",
    "plugin_duration_seconds",
)
# llm-d-router pkg/epp/metrics: the enqueue, dispatch-cycle and plugin-latency buckets
UPSTREAM_LE = ["0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "+Inf"]


async def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _counts(name: str, **match: str) -> float:
    """The ``_count`` samples of ``name`` whose labels include ``match``, summed (process-wide)."""
    return sum(
        s.value
        for fam in REGISTRY.collect()
        if fam.name == name
        for s in fam.samples
        if s.name == name + "_count" and all(s.labels.get(k) == v for k, v in match.items())
    )


def _snapshot() -> dict[str, float]:
    out = {}
    for prefix in PREFIXES:
        enq = prefix + "flow_control_request_enqueue_duration_seconds"
        for outcome in ("Dispatched", "NotYetFinalized", "RejectedCapacity"):
            out[f"{prefix}{outcome}"] = _counts(enq, outcome=outcome, priority="0")
        out[prefix + "cycle"] = _counts(prefix + "flow_control_dispatch_cycle_duration_seconds")
        plugin = prefix + "plugin_duration_seconds"
        out[prefix + "scorer"] = _counts(
            plugin, extension_point="Scorer", plugin_type="queue-scorer", plugin_name="queue-scorer"
        )
        out[prefix + "picker"] = _counts(plugin, extension_point="Picker")
    return out


async def test_enqueue_cycle_and_plugin_durations_under_both_names(door_factory: Any) -> None:  # noqa: F811
    d: Door = await door_factory(priorityBands=[{"priority": 0, "maxRequests": 1}])
    before = _snapshot()
    first = d.start("held")  # admitted at once: Dispatched
    await _until(lambda: d.backend.arrivals == ["held"], "the first request at the backend")
    waiting = d.start("waits")  # the pool full (maxConcurrency 1): queued, NotYetFinalized
    await _until(lambda: d.queued == 1, "one queued")
    status, err = await asyncio.wait_for(d.send("refused", "x"), WAIT)  # band 0 full: RejectedCapacity
    assert status == 429, err
    d.backend.release.release()  # the first ends: a dispatch pass sends the queued one
    await _until(lambda: d.backend.arrivals == ["held", "waits"], "the queued request dispatched")
    d.backend.release.release()
    assert [(await asyncio.wait_for(t, WAIT))[0] for t in (first, waiting)] == [200, 200]
    after = _snapshot()
    grew = {k: after[k] - before[k] for k in after}
    for prefix in PREFIXES:
        assert grew[prefix + "Dispatched"] == 1, grew
        assert grew[prefix + "NotYetFinalized"] == 1, grew
        assert grew[prefix + "RejectedCapacity"] == 1, grew
        assert grew[prefix + "cycle"] >= 1, grew
        assert grew[prefix + "scorer"] >= 2 and grew[prefix + "picker"] >= 2, grew  # (two picks)

    text = generate_latest(REGISTRY).decode()
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    missing = [p + f for p in PREFIXES for f in FAMILIES if p + f not in types]
    assert missing == [], missing
    for p in PREFIXES:
        for f in FAMILIES[4:]:  # (the enqueue, dispatch-cycle and plugin histograms)
            assert types[p + f] == "histogram"
            les = [line.split('le="', 1)[1].split('"', 1)[0] for line in text.splitlines()
                   if line.startswith(p + f + "_bucket")]  # fmt: skip
            assert les[: len(UPSTREAM_LE)] == UPSTREAM_LE, (p + f, les[:12])
