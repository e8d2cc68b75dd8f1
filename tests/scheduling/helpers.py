"""Small builders shared by the scheduling tests."""

from __future__ import annotations

from typing import Any

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import CycleState, PluginHandle
from kvgate.scheduling.types import InferenceRequest


def ep(addr: str, now: float = 0.0, **metrics: Any) -> Endpoint:
    return Endpoint(address=addr, metrics=EndpointMetrics(updated_at=now, **metrics))


def fleet(n: int, now: float = 0.0) -> EndpointStore:
    return EndpointStore(ep(f"10.0.0.{i}:8000", now) for i in range(n))


def cycle(text: str = "", now: float = 0.0, **kw: Any) -> CycleState:
    return CycleState(InferenceRequest("r", kw.pop("model", "m"), prompt_text=text, **kw), now, explain=True)


def handle(store: EndpointStore | None = None, seed: int = 0) -> PluginHandle:
    import random

    return PluginHandle(store, lambda: 0.0, 2.0, random.Random(seed))
