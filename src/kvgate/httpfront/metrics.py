"""The front's protections on ``/metrics``, read from the live fronts at scrape time (no per-request cost)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge

if TYPE_CHECKING:
    from kvgate.httpfront.server import FrontServer


class FrontGauges:
    """``<prefix>_client_timeouts_total{kind}``, ``<prefix>_connections_refused_total`` and
    ``<prefix>_client_connections`` for one process's fronts."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.client_timeouts = Gauge(
            f"{prefix}_client_timeouts_total",
            "Client connections ended by a deadline (kind: header, body, send)",
            ["kind"],
            registry=registry,
        )
        self.refused = Gauge(
            f"{prefix}_connections_refused_total",
            "Client connections refused over limits.maxConnections",
            registry=registry,
        )
        self.open_connections = Gauge(
            f"{prefix}_client_connections", "Open client connections", registry=registry
        )

    def track(self, fronts: Callable[[], Sequence[FrontServer]]) -> None:
        def timeouts(kind: str) -> Callable[[], float]:
            return lambda: float(sum(f.timed_out[kind] for f in fronts()))

        for kind in ("header", "body", "send"):
            self.client_timeouts.labels(kind=kind).set_function(timeouts(kind))
        self.refused.set_function(lambda: float(sum(f.refused for f in fronts())))
        self.open_connections.set_function(lambda: float(sum(len(f.connections) for f in fronts())))
