"""A scheduling profile (producers -> filters -> weighted scorers -> picker) and the explanation it builds."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.fastmetrics import Hist
from kvgate.scheduling.framework import CycleState, Filter, Picker, Plugin, PostPick, Producer, Scorer
from kvgate.scheduling.metrics import FILTER, PICKER, PLUGIN_BUCKETS, PLUGIN_DURATION, SCORER
from kvgate.scheduling.types import NoCapacityError, PoolBusyError, SchedulingError

FIRST = PLUGIN_BUCKETS[0]  # (a plugin's time is almost always in the first bucket: no bisect then)


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
    # What ``plugin_duration_seconds`` times each filter, scorer and picker by (``scheduling.metrics``).
    timer: Callable[[], float] = time.perf_counter
    # Their series, looked up once per profile: the filters' and scorers' (rebuilt when a list changed
    # length: ``add`` appends; a pick checks the lengths, two compares) and the picker's (for that picker).
    _series_f: list[Hist] = field(default_factory=list)
    _series_s: list[Hist] = field(default_factory=list)
    _series_p: tuple[Picker, Hist] | None = None

    def _series(self, picker: Picker) -> Hist:
        s = PLUGIN_DURATION.series
        if len(self._series_f) != len(self.filters):
            self._series_f = [s(FILTER, f.type_name, f.name) for f in self.filters]
        if len(self._series_s) != len(self.scorers):
            self._series_s = [s(SCORER, sc.type_name, sc.name) for sc, _w in self.scorers]
        ps = self._series_p
        if ps is None or ps[0] is not picker:
            ps = self._series_p = (picker, s(PICKER, picker.type_name, picker.name))
        return ps[1]

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
            # Each plugin timed from the clock read that ended the one before (one read per plugin), with
            # this loop's handling of its output (a scorer's clamp and weighing).
            # (``Hist.observe`` inlined: once per plugin and pick.)
            filters, scorers, f_series, s_series = self.filters, self.scorers, self._series_f, self._series_s
            ps = self._series_p
            if (
                len(f_series) != len(filters)
                or len(s_series) != len(scorers)
                or ps is None
                or ps[0] is not picker
            ):
                self._series(picker)
                f_series, s_series, ps = self._series_f, self._series_s, self._series_p
                assert ps is not None
            p_series = ps[1]
            timer = self.timer
            eps = list(candidates)
            t = timer()
            for flt, h in zip(filters, f_series, strict=False):  # (lengths checked above)
                eps = flt.filter(cycle, eps)
                t1 = timer()
                d = t1 - t
                h.counts[0 if d <= FIRST else bisect_left(h.bounds, d)] += 1
                h.sum += d
                t = t1
                if not eps:
                    raise _emptied(flt, self.name)
            totals: list[float] = []
            for (scorer, weight), h in zip(scorers, s_series, strict=False):
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
                t1 = timer()
                d = t1 - t
                h.counts[0 if d <= FIRST else bisect_left(h.bounds, d)] += 1
                h.sum += d
                t = t1
            picked = picker.pick(cycle, eps, totals or [0.0] * len(eps))
            d = timer() - t
            p_series.counts[0 if d <= FIRST else bisect_left(p_series.bounds, d)] += 1
            p_series.sum += d
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
        timer = self.timer  # (each plugin's call alone: the explanation's building left out)
        p_series = self._series(self.picker)
        f_series, s_series = self._series_f, self._series_s
        eps = list(candidates)
        for flt, h in zip(self.filters, f_series, strict=True):
            t = timer()
            eps = flt.filter(cycle, eps)
            h.observe(timer() - t)
            info["filters"].append(
                {"plugin": flt.name, "type": flt.type_name, "kept": [e.address for e in eps]}
            )
            if not eps:
                raise _emptied(flt, self.name)
        totals: list[float] = []
        scorers_info: list[dict[str, Any]] = []
        for (scorer, weight), h in zip(self.scorers, s_series, strict=True):
            t = timer()
            raw = scorer.score(cycle, eps)
            h.observe(timer() - t)
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
        t = timer()
        picked = self.picker.pick(cycle, eps, totals)
        p_series.observe(timer() - t)
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
