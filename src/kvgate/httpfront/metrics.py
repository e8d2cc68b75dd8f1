"""The front's protections on ``/metrics``, read from the live fronts at scrape time (no per-request cost)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from kvgate import stderrlog

if TYPE_CHECKING:
    from kvgate.httpfront.server import FrontServer

_KINDS = ("header", "body", "send")


class LogLinesDropped(Collector):
    """``<prefix>_log_lines_dropped_total``: the log lines (all but the access lines) this process's
    off-loop stderr handler lost (``kvgate.stderrlog.dropped``: its output did not take them), read at
    scrape time; each door registers one under its own prefix (before gw26 they were said only at exit)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            f"{self.prefix}_log_lines_dropped",
            "Log lines lost (all but the access lines): stderr did not take them",
            value=float(stderrlog.dropped()),
        )


class _FrontCounters(Collector):
    """``<prefix>_client_timeouts_total{kind}`` and ``<prefix>_connections_refused_total``: counters (the
    fronts' counts only grow), read from the fronts at each collection (review s17-qa L5: they were gauges
    with a ``_total`` name, which type-checking recording rules and ``promtool check metrics`` refuse)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.fronts: Callable[[], Sequence[FrontServer]] = tuple

    def collect(self) -> Iterator[CounterMetricFamily]:
        fronts = self.fronts()
        timeouts = CounterMetricFamily(
            f"{self.prefix}_client_timeouts",
            "Client connections ended by a deadline (kind: header, body, send)",
            labels=["kind"],
        )
        for kind in _KINDS:
            timeouts.add_metric([kind], float(sum(f.timed_out[kind] for f in fronts)))
        yield timeouts
        yield CounterMetricFamily(
            f"{self.prefix}_connections_refused",
            "Client connections refused over limits.maxConnections",
            value=float(sum(f.refused for f in fronts)),
        )


class FrontGauges:
    """``<prefix>_client_timeouts_total{kind}`` and ``<prefix>_connections_refused_total`` (counters) and
    ``<prefix>_client_connections`` (a gauge) for one process's fronts."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self._counters = _FrontCounters(prefix)
        registry.register(self._counters)
        self.open_connections = Gauge(
            f"{prefix}_client_connections", "Open client connections", registry=registry
        )

    def track(self, fronts: Callable[[], Sequence[FrontServer]]) -> None:
        self._counters.fronts = fronts
        self.open_connections.set_function(lambda: float(sum(len(f.connections) for f in fronts())))
