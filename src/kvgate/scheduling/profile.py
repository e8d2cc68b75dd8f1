"""A scheduling profile (producers -> filters -> weighted scorers -> picker) and the explanation it builds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Filter, Picker, Plugin, PostPick, Producer, Scorer
from kvgate.scheduling.types import NoCapacityError, PoolBusyError, SchedulingError


def dependencies(plugin: Plugin) -> list[Plugin]:
    deps = getattr(plugin, "dependencies", None)
    return list(deps()) if callable(deps) else []


@dataclass(slots=True)
class SchedulerProfile:
    name: str
    filters: list[Filter] = field(default_factory=list)
    scorers: list[tuple[Scorer, float]] = field(default_factory=list)
    picker: Picker | None = None
    producers: list[Producer] = field(default_factory=list)
    post_pick: list[PostPick] = field(default_factory=list)

    def add(self, plugin: Plugin, weight: float | None) -> None:
        """Place a plugin by the roles it implements, like the reference; returns nothing."""
        for dep in dependencies(plugin):
            self._hooks(dep)
        self._hooks(plugin)
        if isinstance(plugin, Filter):
            self.filters.append(plugin)
        if isinstance(plugin, Scorer):
            self.scorers.append((plugin, 1.0 if weight is None else float(weight)))
        if isinstance(plugin, Picker):
            if self.picker is not None and self.picker is not plugin:
                raise ValueError(
                    f"profile {self.name!r} has two pickers: {self.picker.name!r}, {plugin.name!r}"
                )
            self.picker = plugin

    def _hooks(self, plugin: Plugin) -> None:
        if isinstance(plugin, Producer) and plugin not in self.producers:
            self.producers.append(plugin)
        if isinstance(plugin, PostPick) and plugin not in self.post_pick:
            self.post_pick.append(plugin)

    def run(
        self, cycle: CycleState, candidates: Sequence[Endpoint], *, prepared: bool = False
    ) -> list[Endpoint]:
        """``prepared``: this profile's producers already ran on ``cycle`` over ``candidates`` (the
        Director's SLO gate needs their output first); they are not run again."""
        picker = self.picker
        assert picker is not None, "profile built without a picker"
        if not cycle.explain:
            # What the explained run below does, without building its explanation (every pick).
            if not prepared:
                for producer in self.producers:
                    producer.prepare(cycle, candidates)
            eps = list(candidates)
            for flt in self.filters:
                eps = flt.filter(cycle, eps)
                if not eps:
                    raise _emptied(flt, self.name)
            totals: list[float] = []
            for scorer, weight in self.scorers:
                raw = scorer.score(cycle, eps)
                if not scorer.bounded:
                    raw = [0.0 if s < 0.0 else 1.0 if s > 1.0 else s for s in raw]
                # (weighed by plain loops, the same sums in the same order: a comprehension is a function
                # call in 3.11, two of them per pick)
                if not totals:
                    if weight == 1.0:
                        totals = list(raw)
                    else:
                        for s in raw:
                            totals.append(weight * s)
                else:
                    if len(raw) != len(totals):
                        raise ValueError(f"scorer {scorer.name!r}: {len(raw)} scores for {len(totals)}")
                    for i, s in enumerate(raw):
                        totals[i] += weight * s
            picked = picker.pick(cycle, eps, totals or [0.0] * len(eps))
            if not picked:
                raise NoCapacityError(f"picker {picker.name!r} returned no endpoint in profile {self.name!r}")
            for hook in self.post_pick:
                hook.on_picked(cycle, picked[0])
            return picked
        return self._run_explained(cycle, candidates, prepared)

    def _run_explained(
        self, cycle: CycleState, candidates: Sequence[Endpoint], prepared: bool
    ) -> list[Endpoint]:
        """``run`` for a cycle that asks for an explanation: the same steps, each recorded."""
        assert self.picker is not None, "profile built without a picker"
        info: dict[str, Any] = {
            "profile": self.name,
            "candidates": [ep.address for ep in candidates],
            "filters": [],
        }
        cycle.data.setdefault("explanation", {})[self.name] = info
        if not prepared:
            for producer in self.producers:
                producer.prepare(cycle, candidates)
        eps = list(candidates)
        for flt in self.filters:
            eps = flt.filter(cycle, eps)
            info["filters"].append(
                {"plugin": flt.name, "type": flt.type_name, "kept": [e.address for e in eps]}
            )
            if not eps:
                raise _emptied(flt, self.name)
        totals: list[float] = []
        scorers_info: list[dict[str, Any]] = []
        for scorer, weight in self.scorers:
            raw = scorer.score(cycle, eps)
            # Weigh (and clamp to [0, 1] unless the scorer guarantees it), as ``run`` does.
            if not scorer.bounded:
                raw = [0.0 if s < 0.0 else 1.0 if s > 1.0 else s for s in raw]
            if not totals:
                totals = list(raw) if weight == 1.0 else [weight * s for s in raw]
            else:
                totals = [t + weight * s for t, s in zip(totals, raw, strict=True)]
            scorers_info.append(
                {
                    "plugin": scorer.name,
                    "type": scorer.type_name,
                    "weight": weight,
                    "scores": {e.address: raw[i] for i, e in enumerate(eps)},
                }
            )
        if not totals:
            totals = [0.0] * len(eps)
        picked = self.picker.pick(cycle, eps, totals)
        if not picked:
            raise NoCapacityError(
                f"picker {self.picker.name!r} returned no endpoint in profile {self.name!r}"
            )
        info["scorers"] = scorers_info
        info["totals"] = {e.address: totals[i] for i, e in enumerate(eps)}
        info["picker"] = self.picker.name
        info["picked"] = [e.address for e in picked]
        info["winner"] = picked[0].address
        for hook in self.post_pick:
            hook.on_picked(cycle, picked[0])
        return picked


def _emptied(flt: Filter, profile: str) -> SchedulingError:
    """The error of a filter that left no endpoint: a full pool's 429 or an ineligible one's 503."""
    message = f"no endpoint left after filter {flt.name!r} in profile {profile!r}"
    return PoolBusyError(message) if flt.full_when_empty else NoCapacityError(message)
