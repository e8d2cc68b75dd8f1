"""`kvgate serve --pool-name`: a model name an ``InferenceModelRewrite`` makes routable, live, loses its
series ``GRACE_S`` after the rule is gone and no request uses it (doors16; session 15's closing note: "`kvgate
serve` without `--clusters` never removes a series for a model dropped by a reload"). The names the config
lists (``--model``) are never removed; a name with a request in flight keeps its label and series until
that request ends. Before, every name a rule ever routed kept its series for the process's life: rules
created and deleted one after another (canary names, per-tenant aliases) grew the exposition without
bound."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.backend import Backend
from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.discovery import ACTIVE_PORTS
from kvgate.openai.labels import GRACE_S

REWRITE = "llm-d.ai/v1alpha2"


async def _until(cond: Callable[[], bool], within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def _rule(name: str) -> dict:
    rule = {"matches": [{"model": {"value": name}}], "targets": [{"modelRewrite": "m"}]}
    return {"apiVersion": REWRITE, "kind": "InferenceModelRewrite", "metadata": {"name": name},
            "spec": {"rules": [rule]}}  # fmt: skip


@contextlib.asynccontextmanager
async def _gateway(
    double: ApiServerDouble, port: int, *extra: str
) -> AsyncIterator[tuple[GatewayServer, Any]]:
    """``kvgate serve --pool-name llm --model m`` on one pod (``port`` on 127.0.0.1), started; its
    session's ``chat`` and ``series`` (the ``model_name`` values of ``inference_objective_request_total``
    on /metrics)."""
    double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                   "metadata": {"name": "llm"},
                   "spec": {"selector": {"matchLabels": {"app": "sim"}},
                            "targetPorts": [{"number": port}]}})  # fmt: skip
    meta = {"name": "p0", "labels": {"app": "sim"}, "annotations": {ACTIVE_PORTS: str(port)}}
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta})
    double.set_pod_status("p0", ip="127.0.0.1", ready=True)
    flags = ["--pool-name", "llm", "--model", "m", "--kube-server", double.url, "--host",
             "127.0.0.1", "--port", "0", "--admin-port", "0", "--policy", "round-robin", *extra]  # fmt: skip
    cfg = build_config(_parser().parse_args(flags))
    gw = GatewayServer(cfg, build_pools(cfg), scrape=True)
    await gw.start()
    url = f"http://127.0.0.1:{gw.port}"
    try:
        async with aiohttp.ClientSession() as http:

            class Door:
                @staticmethod
                async def chat(model: str) -> int:
                    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
                    async with http.post(f"{url}/v1/chat/completions", data=orjson.dumps(body)) as resp:
                        await resp.read()
                        return resp.status

                @staticmethod
                async def chat_stream(model: str) -> int:
                    body = {"model": model, "max_tokens": 4, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                    async with http.post(f"{url}/v1/chat/completions", data=orjson.dumps(body)) as resp:
                        raw = await resp.read()
                        assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
                        return resp.status

                @staticmethod
                async def series() -> set[str]:
                    async with http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
                        text = await resp.text()
                    return {
                        line.split('model_name="', 1)[1].split('"', 1)[0]
                        for line in text.splitlines()
                        if line.startswith("inference_objective_request_total{")
                    }

                @staticmethod
                async def until_status(model: str, status: int) -> None:
                    for _ in range(600):  # (30 s: 10 s before)
                        if await Door.chat(model) == status:
                            return
                        await asyncio.sleep(0.05)
                    raise AssertionError(f"{model} never answered {status}")

            await _until(lambda: len(gw.pools[0].store) == 1)
            yield gw, Door
    finally:
        await gw.stop(drain_timeout=1.0)


def _injected(gw: GatewayServer) -> list[float]:
    """The labels' clock, injected from now on (time the test does not wait for): its value, to move. It
    starts at the next whole second, not at the real clock's reading: from a whole number, moves by whole
    seconds are exact, so "``GRACE_S`` unseen" is exactly ``GRACE_S`` (session 23's CI flake: from a reading
    just under 2**15 s, ``(t + 299.0) + 1.0 - t`` rounds to 300 - 2**-38: the alias stayed one more sweep)."""
    models = gw.metrics.models
    assert models is not None
    now = [float(math.ceil(models.clock()))]
    models.clock = lambda: now[0]
    return now


async def _idle(gw: GatewayServer) -> None:
    """Until no request is in flight in the gateway (its handlers' ends, which label and count, all run)."""
    proxy = gw.proxy
    assert proxy is not None
    await _until(lambda: proxy.inflight == 0)


def _ends(gw: GatewayServer, model: str) -> int:
    """The requests ended under ``model``, routed to ``m`` (``inference_objective_request_*``' ends)."""
    return sum(c.count for k, c in gw.metrics._stats.children.items() if k[:2] == (model, "m"))


@contextlib.asynccontextmanager
async def _backend(**kw: Any) -> AsyncIterator[Backend]:
    b = await Backend("b0", **kw).start()
    try:
        yield b
    finally:
        b.resume.set()
        await b.stop()


# The labels' clock when the test takes it over: the real one, and a reading just under 2**15 s (the monotonic
# clock there at 06:42 UTC of session 23's final CI) from which ``+ 299.0 + 1.0`` is not 300 s later.
_BEFORE_2_15 = 2.0**15 - 100 + 2.0**-38


@pytest.mark.parametrize("clock_at", [None, _BEFORE_2_15], ids=["real-clock", "just-under-2**15"])
async def test_a_rewrite_names_series_go_after_the_rule_is_deleted(
    double: ApiServerDouble, clock_at: float | None
) -> None:
    async with _backend() as b, _gateway(double, b.port) as (gw, door):
        if clock_at is not None:
            assert gw.metrics.models is not None
            gw.metrics.models.clock = lambda: clock_at
        double.create(_rule("alias"))
        await door.until_status("alias", 200)
        assert await door.chat("m") == 200
        assert await door.series() == {"alias", "m"}
        now = _injected(gw)
        await door.series()  # (a sweep: seen now)
        double.delete(R.INFERENCE_MODEL_REWRITE, "alias")
        await door.until_status("alias", 404)
        await _idle(gw)  # (a request under the alias still ending would mark it seen after the clock moved)
        now[0] += GRACE_S - 1.0
        assert await door.series() == {"alias", "m"}  # not yet GRACE_S unseen
        now[0] += 1.0
        # fails before: the name of a rule gone kept its series for the process's life
        assert await door.series() == {"m"}
        now[0] += 10 * GRACE_S
        assert await door.series() == {"m"}  # the config's name: never removed


async def test_a_stream_under_a_deleted_rules_name_keeps_its_label_to_its_end(
    double: ApiServerDouble,
) -> None:
    """A stream admitted under the rule's name, still running when the rule is gone and the grace has
    passed: its name's series stay, its end is counted under its name (not ``other``), and the series go
    ``GRACE_S`` after it ended."""
    async with _backend(tokens=4) as b, _gateway(double, b.port) as (gw, door):
        double.create(_rule("alias"))
        await door.until_status("alias", 200)
        now = _injected(gw)
        b.pause_after = 0
        stream = asyncio.create_task(door.chat_stream("alias"))
        await asyncio.wait_for(b.paused.wait(), 30)
        double.delete(R.INFERENCE_MODEL_REWRITE, "alias")
        await door.until_status("alias", 404)
        now[0] += 2 * GRACE_S
        assert await door.series() == {"alias"}  # in flight: kept
        # (the ends so far: the first 200, and any the rule still answered before its deletion reached the
        # gateway: session 24 saw one under load, 3 ends where 2 were counted on)
        before = _ends(gw, "alias")
        b.resume.set()
        assert await asyncio.wait_for(stream, 30) == 200
        await _idle(gw)
        assert (
            _ends(gw, "alias") == before + 1
        )  # its end under its own name (its series kept per flow since met19)
        now[0] += GRACE_S
        assert await door.series() == set()


async def test_model_series_grace_sets_kvgate_serves_grace(double: ApiServerDouble) -> None:
    """``--model-series-grace 30`` without ``--clusters`` (doors17; refused there before): a rule's name
    loses its series 30 s after the rule is gone, not ``GRACE_S``. Fails before: kept to ``GRACE_S``."""
    async with _backend() as b, _gateway(double, b.port, "--model-series-grace", "30") as (gw, door):
        double.create(_rule("alias"))
        await door.until_status("alias", 200)
        now = _injected(gw)
        await door.series()  # (a sweep: seen now)
        double.delete(R.INFERENCE_MODEL_REWRITE, "alias")
        await door.until_status("alias", 404)
        await _idle(gw)
        now[0] += 29.0
        assert await door.series() == {"alias"}
        now[0] += 1.0
        assert await door.series() == set()
