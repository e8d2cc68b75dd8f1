"""Lock-free metrics for the per-request path, exported in prometheus_client's own format.

prometheus_client takes a lock and runs checks on every ``inc``/``observe``; on a single-threaded
event loop that is pure overhead, paid several times per request. These keep plain Python numbers
and build the metric families only when ``/metrics`` is scraped. Same names, labels, buckets and
``le`` strings as the prometheus_client metric they replace (the ``_created`` samples are left out).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_INF = float("inf")


class Hist:
    """One histogram series: per-bucket counts (the last bucket is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for b, c in zip((*self.bounds, _INF), self.counts, strict=True):
            acc += c
            out.append((floatToGoString(b), acc))
        return out


class FastHistogram(Hist):
    """An unlabelled histogram registered as its own collector."""

    __slots__ = ("doc", "name")

    def __init__(
        self, name: str, doc: str, buckets: tuple[float, ...], registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        super().__init__(tuple(float(b) for b in buckets))
        self.name, self.doc = name, doc
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.doc)]

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=[])
        fam.add_metric([], self.cumulative(), self.sum)
        yield fam


class FastCounter:
    """A counter with one label, incremented as ``counts[value] += 1`` (bounded by the caller)."""

    def __init__(
        self, name: str, doc: str, label: str, registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        # ``name`` without ``_total``, as prometheus_client's Counter takes it.
        self.name, self.doc, self.label = name.removesuffix("_total"), doc, label
        self.counts: dict[str, float] = {}
        if registry is not None:
            registry.register(self)

    def inc(self, value: str, amount: float = 1.0) -> None:
        self.counts[value] = self.counts.get(value, 0.0) + amount

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.doc, labels=[self.label])]

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, n in list(self.counts.items()):
            fam.add_metric([value], n)
        yield fam
