"""Session 24b's picker cuts decide as the code they replaced (guards, not fixes: they pass on main too).

- ``max-score-picker`` with every score tied draws ``rng.choice(endpoints)`` instead of building the
  tie list and drawing ``rng.choice`` over it: the same index and the same random stream afterwards.
- ``kvgate-cost-scorer`` adds ``saturationPenalty`` to the saturated candidates by index instead of
  rebuilding the list from per-candidate flags: the same costs, and still none when all are saturated.
"""

from __future__ import annotations

import random

from kvgate.scheduling.framework import Params
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.plugins.pickers import MaxScorePicker

from .helpers import cycle, ep, handle


def _old_tie_draw(rng: random.Random, scores: list[float]) -> int:
    """What the picker did before for a tie (main b10fb7c4): the tie list, one ``choice`` over it."""
    best = max(scores)
    top = [i for i, s in enumerate(scores) if s == best]
    return top[0] if len(top) == 1 else rng.choice(top)


def test_all_tied_draws_the_same_endpoint_and_stream() -> None:
    for n in (2, 3, 5, 8):
        eps = [ep(f"e{i}:1") for i in range(n)]
        for seed in range(50):
            h = handle(seed=seed)
            p = MaxScorePicker("p", h)
            ref = random.Random(seed)
            for scores in ([1.0] * n, [0.5] * n, [1.0] + [0.5] * (n - 1), [0.5] * (n - 1) + [0.9]):
                got = p.pick(cycle(), eps, scores)[0]
                assert got is eps[_old_tie_draw(ref, scores)]
            assert h.rng.random() == ref.random()  # the stream is where the old code left it


def test_saturation_penalty_only_on_the_saturated_unless_all_are() -> None:
    def costs(in_flight: list[int], penalty: float) -> list[float]:
        eps = [ep(f"s{i}:1") for i in range(len(in_flight))]
        for e, k in zip(eps, in_flight, strict=True):
            e.inflight.requests = k
        s = KVGateCostScorer.create(
            "k", Params({"maxInFlight": 2, "saturationPenalty": penalty}, "p"), handle()
        )
        return s.costs(cycle("x" * 400), eps)

    loads = [0, 2, 1, 3]  # s1 and s3 are at maxInFlight
    plain, pen = costs(loads, 0.0), costs(loads, 1e6)
    assert pen == [plain[0], plain[1] + 1e6, plain[2], plain[3] + 1e6]
    assert costs([2, 3], 1e6) == costs([2, 3], 0.0)  # every candidate saturated: no penalty
