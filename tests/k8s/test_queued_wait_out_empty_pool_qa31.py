"""qa31 Q5: flow control on, a one-pod pool (``kvgate serve --config``, ``inferencePool``). Requests queue
behind the dispatch gate (``concurrency-detector``, ``maxConcurrency: 1``); the pod turns NotReady (its
replacement is Ready 1 s later: a rollout of one replica, a readiness blip). Every queued request is answered
503 "no ready endpoint" at once, although its TTL (30 s) had far to run and a pod was back within a second.

The reference holds them: its saturation detectors call an empty candidate list saturated (GIE
``concurrency-detector`` ``IsSaturated``: ``if len(candidatePods) == 0 { return true }``; the utilization
detector's ``Saturation`` is 1.0), so the dispatch gate stays shut and the queue waits, to the TTL at most;
only an *arriving* request meets "no candidate pods" (503). kvgate's own gauge agrees with the reference
(docs/flowcontrol.md: ``inference_extension_flow_control_pool_saturation`` "1.0 with no endpoint"), but
``Director.saturated`` (src/kvgate/requestcontrol/director.py:284-288) answers *not* saturated when
``candidates`` raises ("let the pick fail with its own error"), so the queue dispatches every request into a
pick that fails. Fails on main 691110b3."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from k8s.pool_scope_kit import add_pod, pool_obj, serving, until
from k8s.pool_scope_kit import chat_status as chat
from kvgate.k8s.apiserver import ApiServerDouble

sim = pytest.importorskip("kvgate.sim.server")

CONFIG = """pools:
- name: qa31q5
  models: [sim-model]
  inferencePool: {name: qa31q5, namespace: default}
  endpointPickerConfig:
    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    featureGates: [flowControl]
    saturationDetector:
      type: concurrency-detector
      parameters: {maxConcurrency: 1, maxPendingRequests: 0}
    flowControl: {defaultRequestTTL: 30s}
"""


async def test_queued_requests_wait_out_a_moment_with_no_ready_pod(tmp_path: Path) -> None:
    # Two "pods" on one port, two loopback addresses: the first, then its replacement.
    old = sim.Replica(sim.ReplicaConfig(model="sim-model", time_scale=1.0, max_num_seqs=1, seed=1,
                                        host="127.0.0.1"), index=0)  # fmt: skip
    await old.start()
    new = sim.Replica(sim.ReplicaConfig(model="sim-model", time_scale=20.0, seed=2, host="127.0.0.2",
                                        port=old.port), index=1)  # fmt: skip
    await new.start()
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool_obj("qa31q5", ports=(old.port,)))
        add_pod(d, "old", "127.0.0.1")
        f = tmp_path / "gw.yaml"
        f.write_text(CONFIG)
        async with serving(d, "--config", str(f), scrape=True) as (gw, url):
            flow = gw.pools[0].director.flow  # type: ignore[attr-defined]
            async with aiohttp.ClientSession() as http:
                await until(lambda: len(gw.pools[0].store) == 1, what="the old pod")
                # One long generation holds the gate; four more queue behind it.
                sends = [asyncio.create_task(chat(http, url, "sim-model", max_tokens=400)) for _ in range(5)]
                await until(lambda: len(flow.ctl) >= 4, what="four requests queued")
                d.set_pod_status("old", ready=False)  # the old pod leaves (its request in flight finishes)
                await until(lambda: len(gw.pools[0].store) == 0, what="the old pod removed")
                await asyncio.sleep(1.0)
                add_pod(d, "new", "127.0.0.2")  # its replacement, Ready a second later
                codes = Counter(await asyncio.wait_for(asyncio.gather(*sends), timeout=60.0))
                assert codes == Counter({200: 5}), f"queued requests lost to a one-second gap: {dict(codes)}"
    await old.stop()
    await new.stop()
