"""llm-d's ``load-aware-scorer``: an endpoint with an empty waiting queue scores 0.5, one with ``w`` waiting
``0.5 * (1 - min(w, threshold) / threshold)`` (``threshold``: 128), as llm-d-router's. Its queue is the
scraped one: a stale endpoint scores 0, as kvgate's other scorers on scraped metrics. A ``threshold``
below 1 is an error naming the key (the reference falls back to 128 with a log line)."""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle, Scorer
from kvgate.scheduling.registry import register

DEFAULT_THRESHOLD = 128


@register("load-aware-scorer")
class LoadAwareScorer(Scorer):
    bounded = True

    def __init__(self, name: str, handle: PluginHandle, threshold: int = DEFAULT_THRESHOLD) -> None:
        super().__init__(name, handle)
        self.threshold = threshold

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> LoadAwareScorer:
        s = cls(name, handle, params.get_int("threshold", DEFAULT_THRESHOLD, min=1))
        params.finish()
        return s

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        fresh = self.handle.fresh_flags(cycle, endpoints)
        t = self.threshold
        return [
            0.5 * (1.0 - min(ep.metrics.waiting_queue_size, t) / t) if f else 0.0
            for ep, f in zip(endpoints, fresh, strict=True)
        ]
