"""Shared bits of the qa31 churn tests (fixqa31b): the API-server double's pool and pods, simulated
replicas as pods, an in-process ``kvgate serve`` (port 0 everywhere), and a generous poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

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
    d: ApiServerDouble, name: str, ip: str, labels: dict[str, str] | None = None, ready: bool = True
) -> None:
    d.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": dict(labels or {"app": "sim"})},
        }
    )
    d.set_pod_status(name, ip=ip, ready=ready)


async def chat(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    headers: dict[str, str] | None = None,
    max_tokens: int = 4,
) -> int:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(
        f"{url}/v1/chat/completions", data=orjson.dumps(body), headers=headers or {}
    ) as resp:
        await resp.read()
        return resp.status
