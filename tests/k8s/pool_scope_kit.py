"""Shared bits of the tests of review s31-qa31's fixes (Q1-Q6): InferencePool and pod objects for the
API-server double, ``kvgate serve`` started on it, a chat request, and a generous poll (port 0 everywhere)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s.apiserver import ApiServerDouble

POOL_V1 = "inference.networking.k8s.io/v1"
POLICY = "llm-d.ai/v1alpha2"
WAIT_S = 45.0


async def until(cond: Callable[[], bool], within_s: float = WAIT_S, what: str = "condition") -> None:
    end = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < end, f"{what} not met within {within_s} s"
        await asyncio.sleep(0.05)


def pool_obj(
    name: str = "llm", labels: dict[str, str] | None = None, ports: tuple[int, ...] = (8000,)
) -> dict[str, Any]:
    return {"apiVersion": POOL_V1, "kind": "InferencePool", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": dict(labels or {"app": "sim"})},
                     "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}}  # fmt: skip


def add_pod(
    d: ApiServerDouble,
    name: str,
    ip: str,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    annotations: dict[str, str] | None = None,
) -> None:
    meta: dict[str, Any] = {"name": name, "labels": dict(labels or {"app": "sim"})}
    if annotations:
        meta["annotations"] = dict(annotations)
    d.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta})
    d.set_pod_status(name, ip=ip, ready=ready)


async def chat(http: aiohttp.ClientSession, url: str, model: str, max_tokens: int = 4) -> tuple[int, bytes]:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{url}/v1/chat/completions", data=orjson.dumps(body)) as resp:
        return resp.status, await resp.read()


async def chat_status(http: aiohttp.ClientSession, url: str, model: str, max_tokens: int = 4) -> int:
    """``chat``'s status alone."""
    return (await chat(http, url, model, max_tokens))[0]


@asynccontextmanager
async def serving(
    d: ApiServerDouble, *flags: str, scrape: bool = False
) -> AsyncIterator[tuple[GatewayServer, str]]:
    """``kvgate serve`` with ``flags``, watching ``d``, on 127.0.0.1:0, started; yields it and its base URL,
    and stops it (1 s drain) at the end."""
    args = [*flags, "--kube-server", d.url, "--host", "127.0.0.1", "--port", "0"]
    cfg = build_config(_parser().parse_args(args))
    gw = GatewayServer(cfg, build_pools(cfg), scrape=scrape)
    await gw.start()
    try:
        yield gw, f"http://127.0.0.1:{gw.port}"
    finally:
        await gw.stop(drain_timeout=1.0)
