"""Review qa36c-F1: the per-endpoint speed estimator learnt LoRA adapter loads and swaps as speed. A decode
that ran adapters (the request's own, or an endpoint serving adapters) is no speed sample: its steps carry
the adapter slots' churn, not the replica's speed; replicas of one GPU were priced apart by it and
multi-lora's p99 went from 51 ms to 1,474 ms. A decode without adapters is still learnt."""

from __future__ import annotations

import pytest

from kvgate.config.director import build_director
from kvgate.scheduling.types import InferenceRequest, Usage

from .helpers import fleet


def _learn(adapter: str | None, served: frozenset[str]) -> float:
    now = [0.0]
    store = fleet(2)
    target = store.all()[0]
    target.metrics.max_lora, target.metrics.running_loras = 3, served  # (as scraped)
    d = build_director("kvgate", store, clock=lambda: now[0], seed=0)
    for i in range(2 * d.speed.min_samples):
        r = InferenceRequest(
            f"r{i}", adapter or "m", prompt_text="hello " * 50, max_tokens=100, lora_adapter=adapter
        )
        d.on_dispatched(r, target)
        d.on_first_token(r, target)
        now[0] += 99 * 0.03  # 30 ms per token
        d.on_finished(r, target, Usage(50, 100, 0), True)
    return target.inflight.pace


def test_base_model_decodes_are_learnt() -> None:
    assert _learn(None, frozenset()) > 0.0


@pytest.mark.parametrize(
    ("adapter", "served"),
    [("sql-lora", frozenset({"sql-lora"})), (None, frozenset({"sql-lora"})), ("sql-lora", frozenset())],
)
def test_decodes_with_adapters_are_no_speed_sample(adapter: str | None, served: frozenset[str]) -> None:
    assert _learn(adapter, served) == 0.0
