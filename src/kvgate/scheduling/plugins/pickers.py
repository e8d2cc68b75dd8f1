"""Pickers: max-score (reference tie-breaking), random, weighted random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, Picker, PluginHandle
from kvgate.scheduling.registry import register


class _TopK(Picker):
    def __init__(self, name: str, handle: PluginHandle, max_endpoints: int = 1) -> None:
        super().__init__(name, handle)
        self.max_endpoints = max_endpoints

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> _TopK:
        k = params.get_int("maxNumOfEndpoints", 1, min=1)
        params.finish()
        return cls(name, handle, k)


class MaxScorePicker(_TopK):
    """Highest total wins; ties broken at random. Same outcome as the reference's shuffle + stable sort,
    but O(n) for the usual single pick instead of a shuffle per request."""

    def pick(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        rng = self.handle.rng
        if self.max_endpoints == 1:
            best = max(scores)
            ties = scores.count(best)
            if ties == 1:  # the common case, at C speed
                return [endpoints[scores.index(best)]]
            if ties == len(scores):
                # Every endpoint ties (equally loaded, nothing cached): the same draw as over the tie list
                # below (``choice`` takes index ``_randbelow(n)`` of either), without building it.
                return [rng.choice(endpoints)]
            top = []  # (a loop: a comprehension is a function call in 3.11; ties are common when idle)
            for i, s in enumerate(scores):
                if s == best:
                    top.append(i)
            return [endpoints[rng.choice(top)]]
        order = list(range(len(endpoints)))
        rng.shuffle(order)
        order.sort(key=scores.__getitem__, reverse=True)  # stable: shuffled order breaks ties
        return [endpoints[i] for i in order[: self.max_endpoints]]


def _uniform(rng: random.Random, endpoints: Sequence[Endpoint], k: int) -> list[Endpoint]:
    k = min(k, len(endpoints))
    if k == 1:
        return [rng.choice(endpoints)]
    return rng.sample(list(endpoints), k)


class RandomPicker(_TopK):
    def pick(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        return _uniform(self.handle.rng, endpoints, self.max_endpoints)


class WeightedRandomPicker(_TopK):
    """Chance proportional to score (A-Res sampling without replacement for several); all zero -> uniform."""

    def pick(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        rng = self.handle.rng
        if not any(s > 0 for s in scores):
            return _uniform(rng, endpoints, self.max_endpoints)
        if self.max_endpoints == 1:
            return rng.choices(list(endpoints), weights=[max(s, 0.0) for s in scores], k=1)
        keyed = [(rng.random() ** (1.0 / s), i) for i, s in enumerate(scores) if s > 0]
        keyed.sort(reverse=True)
        return [endpoints[i] for _, i in keyed[: self.max_endpoints]]


# Registered below the classes, not by decorator: mypyc (scripts/build_compiled.py) cannot compile those.
register("max-score-picker")(MaxScorePicker)
register("random-picker")(RandomPicker)
register("weighted-random-picker")(WeightedRandomPicker)
