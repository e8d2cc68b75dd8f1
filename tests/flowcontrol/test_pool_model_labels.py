"""The reference's ``inference_pool``, ``model_name`` and ``target_model_name`` labels on the flow-control
families (``inference_extension_flow_control_request_queue_duration_seconds``,
``inference_extension_flow_control_queue_size``), and its queue-duration buckets (100 us .. 60 s), in both
doors, scraped over HTTP: ``kvgate serve``'s ``/metrics`` and ``kvgate epp``'s metrics port. Before
(closing-s19 "Noticed and left undone"), those families carried only ``priority``, ``fairness_id`` (and
``outcome``), so a ``sum by (inference_pool)`` or ``by (model_name)`` panel showed one series per process.
The model names are bounded as fairness ids are (``kvgate.stickylabels``): a name earns its own label at
its 32nd outcome, at most 16 per process; before that, and for every other name, ``other``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from flowcontrol.test_doors import WAIT, HeldBackend, eventually, picker_config
from gateway.conftest import make_config, make_pools
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.flowcontrol import metrics as fm
from kvgate.gateway.server import GatewayServer
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest

DURATION = "inference_extension_flow_control_request_queue_duration_seconds"
QUEUE = "inference_extension_flow_control_queue_size"


class Door:
    def __init__(
        self,
        send: Callable[[str, str], Awaitable[int]],
        scrape: Callable[[], Awaitable[str]],
        director: Director,
        backend: HeldBackend,
    ) -> None:
        self.send, self.scrape, self.director, self.backend = send, scrape, director, backend


@pytest.fixture(params=["serve", "epp"])
async def door(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Door]]:
    """A door whose pool ``p`` serves the model ``<door>-fcm``, with a rule routing ``<door>-alias`` to it
    (the names are the door's own: flow control's labels are the process's)."""
    kind = request.param
    target, alias = f"{kind}-fcm", f"{kind}-alias"
    cleanups: list[Callable[[], Awaitable[None]]] = []
    backend = await HeldBackend().start()
    cleanups.append(backend.stop)
    http = aiohttp.ClientSession()
    cleanups.append(http.close)
    rule = {"matches": [{"model": {"type": "Exact", "value": alias}}], "targets": [{"modelRewrite": target}]}
    cfg = make_config([backend.address], models=(target,), extra={"rewrites": [rule]})
    cfg.pools[0].picker_config = picker_config()

    def body(model: str) -> bytes:
        return orjson.dumps({"model": model, "prompt": "x", "max_tokens": 1})

    try:
        if kind == "serve":
            pools = make_pools(cfg)
            gw = GatewayServer(cfg, pools, scrape=False)
            await gw.start()
            cleanups.append(lambda: gw.stop(drain_timeout=0.5))

            async def send_http(model: str, flow: str) -> int:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                hdrs = {"content-type": "application/json", "x-gateway-inference-fairness-id": flow}
                async with http.post(url, data=body(model), headers=hdrs) as r:
                    await r.read()
                    return r.status

            async def scrape_http() -> str:
                async with http.get(f"http://127.0.0.1:{gw.port}/metrics") as r:
                    assert r.status == 200
                    return await r.text()

            director = pools[0].director
            assert isinstance(director, Director)
            yield kind, Door(send_http, scrape_http, director, backend)
        else:
            store = EndpointStore.from_addresses([backend.address])
            epp_cfg = EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=cfg.pools[0].picker_config)
            ctx = build_context(epp_cfg, store, clock=time.monotonic)
            epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=0))
            await epp.start()
            ch = channel(f"127.0.0.1:{epp.port}")
            cleanups.append(lambda: epp.stop(0))
            cleanups.append(ch.close)
            harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)

            async def send_epp(model: str, flow: str) -> int:
                res = await harness.request(
                    "POST", "/v1/completions", body(model), {"x-gateway-inference-fairness-id": flow}
                )
                return res.status

            async def scrape_epp() -> str:
                async with http.get(f"http://127.0.0.1:{epp.metrics_port}/metrics") as r:
                    assert r.status == 200
                    return await r.text()

            assert isinstance(ctx.director, Director)
            yield kind, Door(send_epp, scrape_epp, ctx.director, backend)
    finally:
        for c in reversed(cleanups):
            await c()


def _samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]


def _total(text: str, name: str, **labels: str) -> float:
    return sum(v for _, v in _samples(text, name, **labels))


async def test_flow_control_families_carry_pool_and_model_labels(door: tuple[str, Door]) -> None:
    kind, d = door
    target, alias, flow = f"{kind}-fcm", f"{kind}-alias", f"{kind}-tenant"
    assert d.director.flow is not None
    metrics = d.director.flow.ctl.metrics
    assert metrics.pool == "p"
    metrics.labels = fm.FlowLabels()  # (its own: other tests in this process may have given the 16 labels)
    d.backend.release = asyncio.Semaphore(fm.PROMOTE_AT + 1)  # (each answered at once)
    for _ in range(fm.PROMOTE_AT + 1):  # admitted at once: Dispatched with a 0 wait
        assert await asyncio.wait_for(d.send(alias, flow), WAIT) == 200
    text = await d.scrape()
    mine = {"inference_pool": "p", "outcome": "Dispatched"}
    # The names' first 31 outcomes are under "other"; from the 32nd each is its own label (the client's
    # name as model_name, the rewrite's target as target_model_name), as the fairness id is.
    own = _total(
        text, DURATION + "_count", model_name=alias, target_model_name=target, fairness_id=flow, **mine
    )
    assert own == 2
    assert _total(text, DURATION + "_count", model_name="other", target_model_name="other", **mine) >= 30
    # The reference's buckets, 100 us .. 60 s.
    bounds = [s["le"] for s, _ in _samples(text, DURATION + "_bucket", model_name=alias, **mine)]
    assert bounds == [
        "0.0001", "0.0005", "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5",
        "5.0", "10.0", "30.0", "60.0", "+Inf",
    ]  # fmt: skip

    # One request holds the pool's only slot; the next waits in the queue under its labels.
    d.backend.release = asyncio.Semaphore(0)
    held = asyncio.ensure_future(d.send(alias, flow))
    await eventually(lambda: len(d.backend.arrivals) == fm.PROMOTE_AT + 2, "the held request at the backend")
    queued = asyncio.ensure_future(d.send(target, flow))
    await eventually(lambda: d.director.flow is not None and len(d.director.flow) == 1, "one queued")
    text = await d.scrape()
    q = {"inference_pool": "p", "fairness_id": flow, "priority": "0"}
    assert _total(text, QUEUE, model_name=target, target_model_name=target, **q) == 1
    assert _total(text, QUEUE, model_name=alias, **q) == 0
    d.backend.release.release()
    d.backend.release.release()
    assert await asyncio.wait_for(asyncio.gather(held, queued), WAIT) == [200, 200]
    text = await d.scrape()
    assert _total(text, QUEUE, model_name=target, target_model_name=target, **q) == 0
    waited = _total(text, DURATION + "_sum", model_name=target, target_model_name=target, **mine)
    assert waited > 0  # (its time in the queue, under its own labels)


def test_model_names_are_bounded_and_sticky() -> None:
    """A spray of names, each in fewer than 32 outcomes, never gets a label; at most 16 names do; a request
    the caller does not pass has empty model labels; the pool label is the metrics' own."""
    labels = fm.FlowLabels()
    metrics = fm.FlowMetrics(True, labels, pool="bound-pool")
    for i in range(2000):
        r = InferenceRequest(f"r{i}", f"spray-{i % 500}", client_model=f"client-spray-{i % 700}")
        metrics.outcome(0, "bound-flow", "Dispatched", 0.0, r)
    assert labels.models.labelled == {fm.NO_MODEL}
    for k in range(20):
        for _ in range(fm.PROMOTE_AT):
            metrics.outcome(0, "bound-flow", "Dispatched", 0.0, InferenceRequest("r", f"busy-{k}"))
    assert len(labels.models.labelled) == 17 and labels.models.label("busy-19") == "other"
    metrics.outcome(0, "bound-flow", "Dispatched", 0.0)
    values = {
        (s.labels["model_name"], s.labels["target_model_name"])
        for m in fm.QUEUE_DURATION.collect()
        for s in m.samples
        if s.labels.get("inference_pool") == "bound-pool"
    }
    assert ("", "") in values and all(
        m in labels.models.labelled | {"other"} for pair in values for m in pair
    )
