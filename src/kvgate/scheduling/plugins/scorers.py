"""Load and adapter scorers on scraped and in-flight signals (reference formulas, scores in [0, 1])."""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle, Scorer
from kvgate.scheduling.registry import register


def min_max_inverted(values: Sequence[float]) -> list[float]:
    """(max - v) / (max - min): the least loaded scores 1, the most 0; all equal -> all 1."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


class _ScrapedScorer(Scorer):
    """Scorers on scraped metrics: a stale endpoint (no scrape within the staleness window) scores 0,
    because a server that stopped answering scrapes is the last place to send more work."""

    bounded = True

    def _fresh(self, cycle: CycleState, eps: Sequence[Endpoint]) -> list[bool]:
        return self.handle.fresh_flags(cycle, eps)


class QueueScorer(_ScrapedScorer):
    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        ok = self._fresh(cycle, endpoints)
        qs = [ep.metrics.waiting_queue_size for ep, f in zip(endpoints, ok, strict=True) if f]
        if not qs:
            return [0.0] * len(endpoints)
        lo, hi = min(qs), max(qs)
        span = hi - lo
        return [
            (0.0 if not f else 1.0 if span == 0 else (hi - ep.metrics.waiting_queue_size) / span)
            for ep, f in zip(endpoints, ok, strict=True)
        ]


class RunningRequestsScorer(_ScrapedScorer):
    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        ok = self._fresh(cycle, endpoints)
        rs = [ep.metrics.running_requests for ep, f in zip(endpoints, ok, strict=True) if f]
        if not rs:
            return [0.0] * len(endpoints)
        lo, hi = min(rs), max(rs)
        span = hi - lo
        return [
            (0.0 if not f else 1.0 if span == 0 else (hi - ep.metrics.running_requests) / span)
            for ep, f in zip(endpoints, ok, strict=True)
        ]


class KVCacheUtilizationScorer(_ScrapedScorer):
    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        ok = self._fresh(cycle, endpoints)
        return [1.0 - ep.metrics.kv_cache_usage if f else 0.0 for ep, f in zip(endpoints, ok, strict=True)]


class TokenLoadScorer(Scorer):
    """In-flight uncached prefill tokens plus (weighted) decode tokens still to come: the picker's own,
    lag-free view of the work each endpoint has. Least loaded scores 1."""

    bounded = True

    def __init__(self, name: str, handle: PluginHandle, decode_weight: float = 1.0) -> None:
        super().__init__(name, handle)
        self.decode_weight = decode_weight

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> TokenLoadScorer:
        w = params.get_float("decodeWeight", 1.0, min=0.0)
        params.finish()
        return cls(name, handle, w)

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        w = self.decode_weight
        return min_max_inverted(
            [ep.inflight.pending_prefill_tokens + w * ep.inflight.pending_decode_tokens for ep in endpoints]
        )


class LoraAffinityScorer(Scorer):
    """1.0 adapter running; 0.8 room to load it; 0.6 adapter waiting; else 0 (reference order).

    A request without an adapter scores every endpoint 1 (neutral). An endpoint that never reported
    ``max_lora`` is assumed to have room: better than pretending it cannot serve adapters at all.
    """

    bounded = True

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        adapter = cycle.request.lora_adapter
        if not adapter:
            return [1.0] * len(endpoints)
        out = []
        for ep in endpoints:
            m = ep.metrics
            if adapter in m.running_loras:
                out.append(1.0)
            elif m.max_lora is None or len(m.running_loras | m.waiting_loras) < m.max_lora:
                out.append(0.8)
            elif adapter in m.waiting_loras:
                out.append(0.6)
            else:
                out.append(0.0)
        return out


# Registered below the classes, not by decorator: mypyc (scripts/build_compiled.py) cannot compile those.
register("queue-scorer")(QueueScorer)
register("running-requests-size-scorer")(RunningRequestsScorer)
register("kv-cache-utilization-scorer")(KVCacheUtilizationScorer)
register("token-load-scorer")(TokenLoadScorer)
register("lora-affinity-scorer")(LoraAffinityScorer)
