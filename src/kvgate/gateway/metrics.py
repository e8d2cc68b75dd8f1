"""Gateway metrics on the admin port, with the reference EPP's names where one exists.

Per-request figures (request count, latency and token histograms: ``kvgate.openai.requeststats``, shared
with the other two doors) are kept in plain Python lists per (model, target model) and turned into
metric families only when ``/metrics`` is scraped: the hot path
does a dict lookup, a bisect and a few additions, with none of prometheus_client's per-observation
locking and checks (about 5% of the gateway's CPU per request before). The in-flight gauge reads the
proxy's own counter at scrape time. Rare events (errors, retries, ejections) stay prometheus_client
counters. The pool gauges
(``inference_pool_average_kv_cache_utilization``, ``..._queue_size``, ``inference_pool_ready_pods``)
belong to the picker (``kvgate.scheduling.metrics``, default registry); the gateway refreshes them
when ``/metrics`` is scraped, so they cost nothing per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

from kvgate import __version__
from kvgate.httpfront.metrics import FrontGauges, LogLinesDropped, ReloadMetrics, reload_families
from kvgate.openai.labels import ModelLabels
from kvgate.openai.requeststats import NO_FLOW, BuildInfo, RequestEnd, RequestErrors, RequestStats

# ``--config`` reloads (``gateway.reload``): (name, help) of the counter and the last reload's pair; the
# ``--workers`` supervisor writes the same families for the files it refuses (``workers``).
RELOADS_TOTAL, LAST_RELOAD_OK, LAST_RELOAD_AT = reload_families("kvgate_gateway", "config file")


class GatewayMetrics:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._stats = RequestStats()
        r.register(self._stats)
        # One request's end (``RequestEnd``): the shared collector's own method, bound (one call, no copy
        # of it here).
        self.observe = self._stats.observe
        # In flight per model and request body sizes (``start`` once its model is known; ``stop`` with
        # what ``start`` returned, however it ends).
        self.start = self._stats.start
        self.stop = self._stats.stop
        self.run = self._stats.run  # (``stop``'s undo: a request flow control held runs again)
        # A request's ``fairness_id`` / ``priority`` labels on llm-d's families (``observe``'s and
        # ``error``'s ``flow``; ``start`` takes the raw values and counts the id toward its label).
        self.flow = self._stats.flow
        r.register(BuildInfo(__version__))  # inference_extension_info, llm_d_epp_info
        # ``inference_objective_request_error_total``: the collector the three doors share.
        self.errors = RequestErrors()
        r.register(self.errors)
        self.error = self.errors.inc  # (bound: one call per error, labels from the config)
        # Set (``bound``) only where names other than the config's can be routed; None: the labels are
        # the config's names as they are (no per-request work).
        self.models: ModelLabels | None = None
        self.inflight = Gauge("kvgate_gateway_inflight_requests", "Requests being handled", registry=r)
        self.retries = Counter(
            "kvgate_gateway_retries_total", "Attempts retried on another endpoint", registry=r
        )
        self.ejections = Counter(
            "kvgate_gateway_endpoint_ejections_total", "Endpoints ejected after repeated failures", registry=r
        )
        # An upstream cut after its ``data: [DONE]`` went out: the answer was complete and ends as usual
        # (no error, not ``stream_cut``), but an upstream that habitually breaks its framing after
        # ``[DONE]`` stays visible here (review s17-doors I1; the drain's own cut is not counted).
        self.cut_after_done = Counter(
            "kvgate_gateway_streams_cut_after_done_total",
            "Event streams whose upstream connection was cut after data: [DONE] or a typed stream's "
            "last event (ended complete)",
            registry=r,
        )
        # ``--config`` reloads (gateway.reload), by result, and the last one's pair.
        self.reload_metrics = ReloadMetrics(r, "kvgate_gateway", "config file", wall)
        self.reloads = self.reload_metrics.reloads
        self.reload_result = self.reload_metrics.result

        # Access lines lost (``access.Lines.dropped``: the output did not take them; read at scrape time).
        self.access_dropped = _Dropped()
        r.register(self.access_dropped)
        r.register(LogLinesDropped("kvgate_gateway"))  # (the other log lines': ``kvgate.stderrlog``)

        # Client-side protections (kvgate.httpfront.server), read from the fronts at scrape time.
        self.front = FrontGauges(r, "kvgate_gateway")
        self.open_connections = self.front.open_connections

    def bound(self, models: ModelLabels) -> None:
        """Label by ``models`` from now on (``kvgate.openai.labels``): for a gateway where a name the config
        does not list can be routed (a rewrite rule with no ``matches`` routes any name; Kubernetes'
        ``InferenceModelRewrite``s add and drop names live). A name unseen for its grace loses its series
        in both collectors (``ModelLabels.sweep``; at each scrape too)."""
        self.models = models
        models.forget += [self._stats.forget, self.errors.forget]
        label, observe, inc, start = models.label, self._stats.observe, self.errors.inc, self._stats.start

        def observe_labelled(end: RequestEnd) -> None:
            end.model, end.target = label(end.model), label(end.target)
            observe(end)

        def start_labelled(
            model: str,
            target: str,
            request_bytes: int = -1,
            fairness: str = "",
            priority: int | None = 0,
            run: bool = True,
        ) -> tuple[str, str, str, str]:
            return start(label(model), label(target), request_bytes, fairness, priority, run)

        def error_labelled(model: str, target: str, code: str, flow: tuple[str, str] = NO_FLOW) -> None:
            inc(label(model), label(target), code, flow)

        self.observe = observe_labelled
        self.start = start_labelled
        self.error = error_labelled

    def track_fronts(self, fronts: Callable[[], list[Any]]) -> None:
        self.front.track(fronts)

    def track_inflight(self, read: Callable[[], float]) -> None:
        """The in-flight gauge reads this at scrape time (no per-request update)."""
        self.inflight.set_function(read)


class _Dropped:
    """``kvgate_gateway_access_log_lines_dropped_total``: ``source()`` at scrape time (0 with the log off)."""

    def __init__(self) -> None:
        self.source: Callable[[], int] | None = None

    def collect(self) -> list[CounterMetricFamily]:
        value = self.source() if self.source is not None else 0
        return [
            CounterMetricFamily(
                "kvgate_gateway_access_log_lines_dropped",
                "Access log lines lost: the output (stderr, --access-log-file) did not take them",
                value=value,
            )
        ]
