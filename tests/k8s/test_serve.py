"""`kvgate serve --pool-name`: the built-in gateway discovers its pool (and rewrites) from Kubernetes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import orjson
import pytest

from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.discovery import ACTIVE_PORTS

sim = pytest.importorskip("kvgate.sim.server")


async def _until(cond: Callable[[], bool], within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def test_flags_and_config_key() -> None:
    args = _parser().parse_args(["--pool-name", "llm", "--pool-namespace", "ns", "--model", "m"])
    cfg = build_config(args)
    ref = cfg.pools[0].inference_pool
    assert ref is not None and (ref.name, ref.namespace) == ("llm", "ns") and cfg.pools[0].endpoints == []


async def test_serve_discovers_pods_and_rewrites(double: ApiServerDouble) -> None:
    reps = [
        sim.Replica(sim.ReplicaConfig(model="sim-model", time_scale=50.0, seed=i), index=i) for i in range(2)
    ]
    for r in reps:
        await r.start()
    # Both "pods" on 127.0.0.1: the pool lists both ports; each pod's active-ports annotation keeps one.
    double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                   "metadata": {"name": "llm"},
                   "spec": {"selector": {"matchLabels": {"app": "sim"}},
                            "targetPorts": [{"number": r.port} for r in reps]}})  # fmt: skip
    for i, r in enumerate(reps):
        meta = {"name": f"p{i}", "labels": {"app": "sim"}, "annotations": {ACTIVE_PORTS: str(r.port)}}
        double.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta})
        double.set_pod_status(f"p{i}", ip="127.0.0.1", ready=True)
    flags = ["--pool-name", "llm", "--model", "sim-model", "--kube-server", double.url,
             "--host", "127.0.0.1", "--port", "0", "--policy", "round-robin"]  # fmt: skip
    args = _parser().parse_args(flags)
    cfg = build_config(args)
    gw = GatewayServer(cfg, build_pools(cfg), scrape=True)
    await gw.start()
    url = f"http://127.0.0.1:{gw.port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def chat(model: str) -> tuple[int, dict]:
                body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(f"{url}/v1/chat/completions", data=orjson.dumps(body)) as resp:
                    return resp.status, orjson.loads(await resp.read())

            await _until(lambda: len(gw.pools[0].store) == 2)
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 200
            assert [s for s, _ in await asyncio.gather(*(chat("sim-model") for _ in range(6)))] == [200] * 6
            # An InferenceModelRewrite object makes an alias routable, live.
            assert (await chat("alias"))[0] == 404
            rule = {"matches": [{"model": {"value": "alias"}}], "targets": [{"modelRewrite": "sim-model"}]}
            double.create({"apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite",
                           "metadata": {"name": "alias"}, "spec": {"rules": [rule]}})  # fmt: skip
            await _until(lambda: bool(gw.proxy and gw.proxy.rewriter))
            status, body = await chat("alias")
            assert status == 200 and body["model"] == "alias"  # rewritten back in the response
            double.delete(R.POD, "p1")
            await _until(lambda: len(gw.pools[0].store) == 1)
            assert {e.address for e in gw.pools[0].store.all()} == {f"127.0.0.1:{reps[0].port}"}
            assert [s for s, _ in await asyncio.gather(*(chat("sim-model") for _ in range(4)))] == [200] * 4
    finally:
        await gw.stop(drain_timeout=1.0)
        for r in reps:
            await r.stop()
