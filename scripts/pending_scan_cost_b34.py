"""The per-pick cost of ``pendingHolders`` (review rev-b34 F3; its bench_pending_scan.py, plus the pick's
own bookkeeping). Not a test: a measurement on this machine's clock.

    PYTHONPATH=src python scripts/pending_scan_cost_b34.py

Per fleet size: ``PrefixCacheScorer.prepare`` per pick (a shared ~10k-character head, each request its own
question after it) with the flag off (picks committed), on with nothing pending, and on with 64 picks in
flight at every endpoint that have not reached their first token; then ``on_picked`` + ``on_first_token``
per pick, off and on. Each figure is the best of 3; the ratios are to ``off`` from the same run.
"""

from __future__ import annotations

import random
import sys
import time

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import CycleState, PluginHandle
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.types import InferenceRequest

HEAD = "".join(f"tenant rule {i}. " for i in range(600))  # a shared system prompt (~10k chars)


def _scorer(n_eps: int, pending: bool) -> tuple[PrefixCacheScorer, list[Endpoint]]:
    store = EndpointStore(Endpoint(f"10.0.0.{i}:8000") for i in range(n_eps))
    s = PrefixCacheScorer(
        "p", PluginHandle(store, lambda: 0.0, 2.0, random.Random(0)), pending_holders=pending
    )
    return s, store.all()


def _cycle(rid: str, rng: random.Random) -> CycleState:
    return CycleState(InferenceRequest(rid, "m", prompt_text=HEAD + f"q{rng.random()}" * 400), 0.0)


def prepare_us(n_eps: int, pending_per_ep: int, pending: bool) -> float:
    s, eps = _scorer(n_eps, pending)
    rng = random.Random(0)
    k = 0
    for e in eps:  # in flight: picks not yet at their first token, sharing the head
        for _ in range(pending_per_ep):
            c = _cycle(f"r{k}", rng)
            s.prepare(c, eps)
            s.on_picked(c, e)
            k += 1
    probes = [_cycle(f"p{i}", rng) for i in range(200)]
    t = time.perf_counter()
    for c in probes:
        s.prepare(c, eps)
    return (time.perf_counter() - t) / len(probes) * 1e6


def pick_us(n_eps: int, pending: bool) -> float:
    """``on_picked`` then ``on_first_token`` (the pick recorded, pending then committed), per pick."""
    s, eps = _scorer(n_eps, pending)
    rng = random.Random(1)
    cycles = [_cycle(f"r{i}", rng) for i in range(256)]
    for c in cycles:
        s.prepare(c, eps)
    t = time.perf_counter()
    for i, c in enumerate(cycles):
        e = eps[i % n_eps]
        s.on_picked(c, e)
        s.on_first_token(c.request, e, 0.0)
    return (time.perf_counter() - t) / len(cycles) * 1e6


def main() -> None:
    if len(sys.argv) > 1:
        sys.exit(__doc__)
    for n in (4, 16, 32):
        off = min(prepare_us(n, 64, False) for _ in range(3))
        on0 = min(prepare_us(n, 0, True) for _ in range(3))
        on = min(prepare_us(n, 64, True) for _ in range(3))
        p_off = min(pick_us(n, False) for _ in range(3))
        p_on = min(pick_us(n, True) for _ in range(3))
        print(
            f"{n:3d} endpoints: prepare() off {off:7.1f} us, on (none pending) {on0:7.1f} us, on (64 pending "
            f"each) {on:7.1f} us ({on / off:.1f}x off); on_picked+on_first_token off {p_off:5.1f} us, "
            f"on {p_on:5.1f} us"
        )


if __name__ == "__main__":
    main()
