"""``pools[].passPriority``: the request's InferenceObjective priority reaches the model server as vLLM's
``priority`` body field (negated: vLLM runs lower first), in both front doors, over real HTTP (``kvgate
serve``) and real gRPC ext_proc (``kvgate epp`` through the Envoy-playing harness) on loopback; the
body the backend received is what is checked. Off by default (vLLM refuses a nonzero ``priority``
unless it runs ``--scheduling-policy priority``), and then a client's own ``priority`` passes as sent."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.backend import Backend
from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer

Send = Callable[[dict[str, Any], dict[str, str]], Awaitable[int]]


def _doc(port: int, passing: bool) -> dict[str, Any]:
    picker = {
        # A detector that sees the load itself (scrapes are off here): the batch request is not shed.
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 100}},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    pool = {"name": "p", "endpoints": [f"127.0.0.1:{port}"], "models": ["m"], "passPriority": passing}
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "objectives": [{"name": "critical", "priority": 10}, {"name": "batch", "priority": -1}],
        "pools": [{**pool, "endpointPickerConfig": picker}],
    }


@pytest.fixture(params=["serve", "epp"])
async def door(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[bool], Awaitable[tuple[Send, Backend]]]]:
    cleanups: list[Callable[[], Awaitable[Any]]] = []

    async def make(passing: bool) -> tuple[Send, Backend]:
        backend = await Backend("b").start()
        cleanups.append(backend.stop)
        http = aiohttp.ClientSession()
        cleanups.append(http.close)
        cfg = parse_gateway_config(_doc(backend.port, passing))
        if request.param == "serve":
            gw = GatewayServer(cfg, [build_pool(p) for p in cfg.pools], scrape=False)
            await gw.start()
            cleanups.append(lambda: gw.stop(drain_timeout=0.5))

            async def send(body: dict[str, Any], headers: dict[str, str]) -> int:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                async with http.post(url, data=orjson.dumps(body), headers=headers) as r:
                    await r.read()
                    return r.status

            return send, backend
        store = EndpointStore.from_addresses([backend.address])
        epp_cfg = EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=cfg.pools[0].picker_config)
        ctx = build_context(epp_cfg, store, clock=time.monotonic)
        epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
        await epp.start()
        ch = channel(f"127.0.0.1:{epp.port}")
        cleanups.extend([lambda: epp.stop(0), ch.close])
        harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)

        async def send_epp(body: dict[str, Any], headers: dict[str, str]) -> int:
            res = await harness.request("POST", "/v1/completions", orjson.dumps(body), headers)
            return res.status

        return send_epp, backend

    yield make
    for c in reversed(cleanups):
        await c()


def _last_body(backend: Backend) -> dict[str, Any]:
    return backend.received[-1][2]


async def test_the_objective_priority_reaches_the_server_negated(door: Any) -> None:
    send, backend = await door(True)
    body = {"model": "m", "prompt": "hello", "max_tokens": 2}
    assert await send(body, {"x-gateway-inference-objective": "critical"}) == 200
    assert _last_body(backend)["priority"] == -10
    assert await send(body, {"x-gateway-inference-objective": "batch"}) == 200
    assert _last_body(backend)["priority"] == 1
    assert await send(body, {}) == 200  # priority 0: vLLM's default, the body is left alone
    assert "priority" not in _last_body(backend)
    # A client's own value gives way to its objective's (0 without one): it cannot jump the queue.
    assert await send({**body, "priority": -100}, {}) == 200
    assert _last_body(backend)["priority"] == 0
    assert await send({**body, "priority": -100}, {"x-gateway-inference-objective": "batch"}) == 200
    assert _last_body(backend)["priority"] == 1
    assert _last_body(backend)["prompt"] == "hello"  # the rest of the body as sent


async def test_off_by_default_the_body_passes_as_sent(door: Any) -> None:
    send, backend = await door(False)
    body = {"model": "m", "prompt": "hello", "max_tokens": 2}
    assert await send(body, {"x-gateway-inference-objective": "critical"}) == 200
    assert "priority" not in _last_body(backend)
    assert await send({**body, "priority": 3}, {"x-gateway-inference-objective": "critical"}) == 200
    assert _last_body(backend)["priority"] == 3


def test_the_key_is_a_boolean() -> None:
    assert not parse_gateway_config(_doc(1, False)).pools[0].pass_priority
    doc = _doc(1, True)
    assert parse_gateway_config(doc).pools[0].pass_priority
    doc["pools"][0]["passPriority"] = "yes"
    with pytest.raises(GatewayConfigError, match=r"pools\[0\]\.passPriority"):
        parse_gateway_config(doc)


def test_kvgate_epp_has_the_flag() -> None:
    from kvgate.extproc.config import load

    common: dict[str, Any] = dict(config=None, pool_name=None, endpoints="127.0.0.1:1", models=["m"],
                                  policy="kvgate", engine="vllm", config_file=None, config_text=None,
                                  conformance=False)  # fmt: skip
    assert load(**common, pass_priority=True).pool.pass_priority
    assert not load(**common).pool.pass_priority


def test_refused_for_an_engine_other_than_vllm() -> None:
    # The value is sent negated (vLLM runs lower first); SGLang's default runs higher first, so the same
    # body would run critical work last there: the key is refused, naming it.
    doc = _doc(1, True)
    doc["pools"][0]["engine"] = "sglang"
    with pytest.raises(GatewayConfigError, match=r"pools\[0\]\.passPriority.*vllm"):
        parse_gateway_config(doc)
    doc["pools"][0]["passPriority"] = False
    assert not parse_gateway_config(doc).pools[0].pass_priority  # off: any engine
    doc["pools"][0]["engine"] = "vllm"
    doc["pools"][0]["passPriority"] = True
    assert parse_gateway_config(doc).pools[0].pass_priority


def test_kvgate_epp_refuses_the_flag_for_an_engine_other_than_vllm() -> None:
    from kvgate.extproc.config import EppConfigError, load

    common: dict[str, Any] = dict(config=None, pool_name=None, endpoints="127.0.0.1:1", models=["m"],
                                  policy="kvgate", engine="sglang", config_file=None, config_text=None,
                                  conformance=False)  # fmt: skip
    with pytest.raises(EppConfigError, match=r"--pass-priority.*vllm"):
        load(**common, pass_priority=True)
    assert not load(**common).pool.pass_priority


def test_a_reload_names_the_key_as_in_the_file() -> None:
    from kvgate.gateway.reload import not_applied

    base = parse_gateway_config(_doc(1, False))
    assert not_applied(base, parse_gateway_config(_doc(1, True))) == ["pools[p].passPriority"]
