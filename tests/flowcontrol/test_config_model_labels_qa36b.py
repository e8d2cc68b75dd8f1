"""qa36b-F3: ``kvgate serve`` labelled a configured model ``other`` on the flow-control families for its first
31 outcomes (the sticky rule that bounds client-supplied names), while its request families in the same
scrape carried the name from the first request: a ``by (model_name)`` join of queue depth and request rate
put the queue under ``other``. The config's models (and adapters) now have their labels from the first
outcome (``StickyLabels.give``: bounded by the config, outside the 16 labels names earn)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from flowcontrol.test_doors import HeldBackend, picker_config
from gateway.conftest import make_config, make_pools
from kvgate.flowcontrol.metrics import QUEUE_DURATION
from kvgate.gateway.server import GatewayServer
from kvgate.stickylabels import OTHER, StickyLabels

WAIT = 30.0
MODEL = "qa36b-f3-model"  # (a name no other test gives: the flow labels are the process's)


def test_given_names_are_labelled_at_once_and_leave_the_earned_labels_whole() -> None:
    labels = StickyLabels(size=2, candidates=8, promote_at=2)
    labels.give(["a", "b", "c", "", OTHER])
    assert [labels.label(n) for n in ("a", "b", "c", "x", OTHER)] == ["a", "b", "c", OTHER, OTHER]
    for name in ("x", "x", "y", "y", "z", "z"):  # two names earn the two labels; the third does not
        labels.count(name)
    assert [labels.label(n) for n in ("x", "y", "z")] == ["x", "y", OTHER]


def _dispatched(model: str) -> float:
    return sum(
        s.value
        for fam in QUEUE_DURATION.collect()
        for s in fam.samples
        if s.name.endswith("_count")
        and s.labels.get("outcome") == "Dispatched"
        and s.labels.get("model_name") == model
        and s.labels.get("target_model_name") == model
    )


async def test_a_configured_model_labels_the_flow_families_from_its_first_request() -> None:
    backend = await HeldBackend().start()
    cfg = make_config([backend.address], models=(MODEL,))
    cfg.pools[0].picker_config = picker_config()
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        backend.release.release()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
            body = orjson.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1})
            url = f"http://127.0.0.1:{gw.port}/v1/completions"
            async with http.post(url, data=body, headers={"content-type": "application/json"}) as r:
                assert r.status == 200, await r.read()
        assert _dispatched(MODEL) == 1
    finally:
        await asyncio.wait_for(gw.stop(drain_timeout=0.5), WAIT)
        await backend.stop()
