"""The front's protections on ``/metrics``, read from the live fronts at scrape time (no per-request cost)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
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


# A config file's reload results, the ``result`` label of ``<prefix>_config_reloads_total``: applied; invalid
# (refused whole: the running config kept); failed (valid, but could not be applied: the running config kept).
RELOAD_RESULTS = ("applied", "invalid", "failed")


def reload_families(prefix: str, what: str) -> tuple[tuple[str, str], tuple[str, str], tuple[str, str]]:
    """(name, help) of a door's reload counter and of Prometheus' and Alertmanager's own pair of gauges,
    ``*_config_last_reload_successful`` / ``*_config_last_reload_success_timestamp_seconds``: an alert on
    ``== 0`` holds while the old config runs, where the counter's ``increase()`` resolves (review s29-qa29
    Q4). ``what`` names the file (``config file``, ``clusters file``)."""
    return (
        (f"{prefix}_config_reloads_total", f"{what.capitalize()} reloads by result"),
        (
            f"{prefix}_config_last_reload_successful",
            f"Whether the last {what} reload succeeded (0: refused or failed: the file is not what runs)",
        ),
        (
            f"{prefix}_config_last_reload_success_timestamp_seconds",
            f"Time of the last successful {what} reload (the start's load until one)",
        ),
    )


class ReloadMetrics:
    """A door's config-file reloads (``reload_families``): the counter, each result a series from the start
    (the first refusal is an increase: qa24 F5), and the last reload's pair, 1 and the start time at first."""

    def __init__(
        self, registry: CollectorRegistry, prefix: str, what: str, wall: Callable[[], float]
    ) -> None:
        total, ok, at = reload_families(prefix, what)
        self._wall = wall  # (the last successful reload's timestamp: Unix time)
        self.reloads = Counter(*total, ["result"], registry=registry)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result=result)
        self.last_reload_ok = Gauge(*ok, registry=registry)
        self.last_reload_at = Gauge(*at, registry=registry)
        self.last_reload_ok.set(1)
        self.last_reload_at.set(wall())

    def result(self, result: str) -> None:
        """One reload's result (``RELOAD_RESULTS``): counted, and the last reload's gauges."""
        self.reloads.labels(result=result).inc()
        ok = result == "applied"
        self.last_reload_ok.set(1 if ok else 0)
        if ok:
            self.last_reload_at.set(self._wall())
