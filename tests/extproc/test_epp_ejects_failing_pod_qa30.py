"""Review s30-qa30 Q2: ``kvgate epp`` kept sending traffic to a pod that answers every request 500 at once
(an engine that fails each request while its API server and ``/metrics`` still answer): the EPP saw each
answer's ``:status`` (response headers go through it) but ejected nothing, and a fast 500 leaves the pod
looking idle, so the default policy gave it about half the requests, indefinitely. Now the EPP charges
the statuses by ``kvgate serve``'s rule (``kvgate.datalayer.ejection``; ``extproc.outlier``):
``ejectAfterFailures`` (3) consecutive 5xx eject it, probed back in at ``/health``.

Fails on main 4ef1d6c7 (no ``health`` / outlier there: the broken pod kept about half the last 50
requests, 22-27 in qa30's 3 runs)."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
import orjson

from gateway.backend import Backend
from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc import config as epp_config
from kvgate.extproc.context import build_context
from kvgate.extproc.testing import EnvoyHarness


async def _until(cond, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_pod_answering_every_request_500_stops_being_picked_by_the_epp(start_epp):
    bad, good = await Backend("bad").start(), await Backend("good").start()
    bad.mode = "error500"  # its /metrics and /health still answer 200
    try:
        # (the default policy, kvgate; the probe far beyond the test once it is ejected)
        health = HealthConfig(eject_base_s=300, eject_max_s=300)
        epp = await start_epp([bad.address, good.address], health=health)
        async with MetricsScraper(epp.store, interval=0.05), aiohttp.ClientSession() as http:
            await _until(lambda: all(ep.metrics.updated_at is not None for ep in epp.store.all()))
            envoy = EnvoyHarness(epp.stub, http)
            served: list[tuple[str, int]] = []
            for i in range(60):
                body = orjson.dumps({"model": "m", "prompt": f"request {i}: say hello", "max_tokens": 4})
                res = await envoy.request("POST", "/v1/completions", body)
                served.append((res.served, res.status))
        late = collections.Counter(("bad" if a == bad.address else "good", s) for a, s in served[10:])
        # kvgate serve's rule (ejectAfterFailures 3): ejected at its third 500 (main: about half of all).
        assert late[("bad", 500)] <= 3, dict(late)
        assert sum(1 for a, _ in served if a == bad.address) <= 6, served
    finally:
        await bad.stop()
        await good.stop()


def test_kvgate_epp_builds_its_context_with_the_health_sections_ejection(tmp_path) -> None:
    gw = tmp_path / "gw.yaml"
    gw.write_text(
        "pools:\n- {name: p, endpoints: ['127.0.0.1:1', '127.0.0.1:2'], models: [m]}\n"
        "health: {ejectAfterFailures: 2}\n"
    )
    cfg = epp_config.load(
        config=str(gw), pool_name=None, endpoints=None, models=[], policy="kvgate", engine="vllm",
        config_file=None, config_text=None, conformance=False,
    )  # fmt: skip
    store = EndpointStore.from_addresses(cfg.pool.endpoints)
    ctx = build_context(cfg, store)
    assert ctx.outlier is not None
    a, b = store.all()
    b.metrics.updated_at = a.metrics.updated_at = ctx.clock()  # (b up: a may be ejected)
    ctx.outlier.answered(a, 500)
    ctx.outlier.answered(a, 429)  # (busy: neither)
    assert a.healthy
    ctx.outlier.answered(a, 503)
    assert not a.healthy and b.healthy


def test_kvgate_epp_probes_https_endpoints_over_tls(tmp_path) -> None:
    gw = tmp_path / "gw.yaml"
    gw.write_text("pools:\n- {name: p, endpoints: ['https://127.0.0.1:1'], models: [m]}\n")
    cfg = epp_config.load(
        config=str(gw), pool_name=None, endpoints=None, models=[], policy="kvgate", engine="vllm",
        config_file=None, config_text=None, conformance=False,
    )  # fmt: skip
    ctx = build_context(cfg, EndpointStore.from_addresses(cfg.pool.endpoints))
    assert ctx.outlier is not None and ctx.outlier.tracker.default_tls is not None
