"""The picker's Prometheus metrics (default registry), named after the reference's where one exists.

The series touched on every pick (scheduling latency, picks per endpoint, prefix hit ratio and bytes)
are lock-free collectors (``fastmetrics``). The reference's families keep GIE's names and buckets
(``pkg/epp/metrics``; review s26-qa F4: a fleet mixing both EPPs sums their buckets by ``le``), and its
``inference_extension_scheduler_attempts_total{status}`` is counted from the pick's own records at the
scrape (``_Attempts``): nothing more on the pick path.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from kvgate.scheduling.fastmetrics import FastCounter, FastHistogram, Hist
from kvgate.weakmembers import members

if TYPE_CHECKING:
    from kvgate.datalayer.store import EndpointStore

SCHEDULER_E2E = FastHistogram(
    "inference_extension_scheduler_e2e_duration_seconds",
    "End-to-end scheduling latency (one pick, all profiles).",
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)
# One series per endpoint address picked that some picker's store still holds: ``trim_picks`` drops the
# rest at each pool-metrics refresh (review s28-qa Q1: a rollout gives every pod a new address).
PICKS = FastCounter(
    "kvgate_scheduler_picks_total", "Requests scheduled to each endpoint (primary pick).", "endpoint"
)
# Every picker's store (``pick_store``): PICKS is process-wide and an address may be in two pools' stores,
# so a series goes only when no store holds its address. Weak: a dropped picker's store leaves with it.
_PICK_STORES: weakref.WeakSet[EndpointStore] = weakref.WeakSet()
SCHEDULER_ERRORS = Counter("kvgate_scheduler_errors_total", "Scheduling failures by error code.", ["code"])
# Every prefix index this process holds (``prefix_index``; one per prefix scorer, shared with a reload's
# successor): ``inference_extension_prefix_indexer_size`` is their entries summed at the scrape. GIE's gauge
# has no labels, so two pools' scorers cannot each have a series; before (qa29) each insert set the gauge to
# its own index's size, and it flipped between pools. Weak: a dropped scorer's index leaves the sum with it.
_PREFIX_INDEXES: weakref.WeakSet[Any] = weakref.WeakSet()
_PREFIX_INDEXES_LOCK = threading.Lock()  # (scorers are built on threads too: a reload's picker check)
PREFIX_HIT_RATIO = FastHistogram(
    "inference_extension_prefix_indexer_hit_ratio",
    "Fraction of a request's prefix blocks found at the chosen endpoint.",
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
PREFIX_HIT_BYTES = FastHistogram(
    "inference_extension_prefix_indexer_hit_bytes",
    "Prompt bytes (characters) matched in the prefix index at the chosen endpoint.",
    buckets=(0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
POOL_KV = Gauge(
    "inference_pool_average_kv_cache_utilization",
    "Mean KV-cache utilisation over the pool's endpoints.",
    ["name"],
)
POOL_QUEUE = Gauge(
    "inference_pool_average_queue_size", "Mean waiting-queue size over the pool's endpoints.", ["name"]
)
# One series per ready endpoint (a discovered pod's: the reference's ``<pod>-rank-<i>``; a static one's: its
# address), and llm-d's twin (always the address).
POOL_PER_POD_QUEUE = Gauge(
    "inference_pool_per_pod_queue_size",
    "Requests waiting in each ready endpoint's queue (model_server_pod: <pod>-rank-<i>, or its address).",
    ["name", "model_server_pod"],
)
LLMD_PER_ENDPOINT_QUEUE = Gauge(
    "llm_d_epp_per_endpoint_queue_size",
    "Requests waiting in each ready endpoint's queue (model_server_endpoint: its address).",
    ["name", "model_server_endpoint"],
)
POOL_READY = Gauge("inference_pool_ready_pods", "Endpoints eligible for scheduling in the pool.", ["name"])
SHED = Counter("kvgate_requests_shed_total", "Sheddable requests rejected at saturation.")


class _PrefixIndexSize:
    """``inference_extension_prefix_indexer_size``: the ``total`` (entries: endpoint, block) of every index
    ``prefix_index`` registered, summed when scraped (nothing on the pick path)."""

    name = "inference_extension_prefix_indexer_size"
    doc = "Entries (endpoint, block) in the approximate prefix indexes (summed over the process's scorers)."

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.doc)]

    def collect(self) -> Iterator[Metric]:
        # Copied under the lock: a reload's picker check on a thread adds to the set meanwhile ("Set
        # changed size during iteration", review s29-rev-c29 F2); ``members``: a collected index's removal
        # from another thread's collection takes no lock.
        with _PREFIX_INDEXES_LOCK:
            indexes = members(_PREFIX_INDEXES)
        yield GaugeMetricFamily(self.name, self.doc, value=float(sum(i.total for i in indexes)))


REGISTRY.register(_PrefixIndexSize())


def prefix_index(index: Any) -> None:
    """Count ``index`` (a ``PrefixIndex``: its ``total``) in ``inference_extension_prefix_indexer_size``."""
    with _PREFIX_INDEXES_LOCK:
        _PREFIX_INDEXES.add(index)


def forget_prefix_index(index: Any) -> None:
    """``index`` leaves ``inference_extension_prefix_indexer_size`` now: its picker was replaced (a reload's
    swap). Not left to the weak set: a replaced Director sits in a reference cycle, collected only by the
    cycle collector, which may run minutes later (review s29-rev-c29 F3)."""
    with _PREFIX_INDEXES_LOCK:
        _PREFIX_INDEXES.discard(index)


def pick_store(store: EndpointStore) -> None:
    """Count ``store``'s endpoints among those whose ``kvgate_scheduler_picks_total`` series stay."""
    _PICK_STORES.add(store)


def trim_picks() -> None:
    """Drop the ``kvgate_scheduler_picks_total`` series of addresses no picker's store holds any more (a
    counter that vanishes has ended, for Prometheus). O(endpoints + series): per refresh, not per pick."""
    counts = PICKS.counts
    if not counts:
        return
    live = {ep.address for store in members(_PICK_STORES) for ep in store.all()}
    for gone in [a for a in counts if a not in live]:
        del counts[gone]


_SCHEDULER_ERROR_CHILDREN: dict[str, Any] = {}
# Scheduling failures as the reference's attempts counter counts them: a shed (``ShedError``: the
# saturation detector's refusal) is the reference's admission control, refused before its scheduler runs,
# so not an attempt; a pool busy (``PoolBusyError``, same code) is the profile's filter's, a failed attempt
# as GIE's (review s26-rev-fixqa26b F4): told apart by the error's type, not its code.
_FAILED_ATTEMPTS = [0]


class _Attempts:
    """``inference_extension_scheduler_attempts_total{status}``: ``success`` = the picks
    ``SCHEDULER_E2E`` timed (every pick that returned, once), ``failure`` = the scheduling errors but
    sheds (``scheduler_error``'s ``attempt``), read at the scrape."""

    name = "inference_extension_scheduler_attempts"
    doc = "Total number of scheduling attempts."

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.doc, labels=["status"])]

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(self.name, self.doc, labels=["status"])
        fam.add_metric(["success"], float(sum(SCHEDULER_E2E.counts)))
        fam.add_metric(["failure"], float(_FAILED_ATTEMPTS[0]))
        yield fam


REGISTRY.register(_Attempts())


class _LlmdSchedulerE2E:
    """``llm_d_epp_scheduler_e2e_duration_seconds``: ``SCHEDULER_E2E`` under llm-d's current name
    (llm-d-router marks the ``inference_extension_`` one deprecated; qa32b Q7), read at the scrape: nothing
    on the pick."""

    name = "llm_d_epp_scheduler_e2e_duration_seconds"
    doc = "End-to-end scheduling latency distribution in seconds."

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.doc)]

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=[])
        fam.add_metric([], SCHEDULER_E2E.cumulative(), SCHEDULER_E2E.sum)
        yield fam


REGISTRY.register(_LlmdSchedulerE2E())

# GIE / llm-d-router's plugin latency buckets (``pkg/epp/metrics``: 100 us .. 100 ms) and extension points.
PLUGIN_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
FILTER, SCORER, PICKER = "Filter", "Scorer", "Picker"


class _PluginDuration:
    """``{inference_extension_,llm_d_epp_}plugin_duration_seconds{extension_point, plugin_type,
    plugin_name}`` (qa36b-F2): each profile's filters, scorers and picker, timed per pick into one
    lock-free series per (extension point, type, name), handed to the profile once (``series``), so a pick
    only observes. Bounded by the plugins configured (names from the config, not from requests)."""

    names = ("inference_extension_plugin_duration_seconds", "llm_d_epp_plugin_duration_seconds")
    doc = (
        "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin "
        "name."
    )
    labels = ("extension_point", "plugin_type", "plugin_name")

    def __init__(self) -> None:
        self.hists: dict[tuple[str, str, str], Hist] = {}
        self._lock = threading.Lock()  # (profiles are built on threads too: a reload's picker check)

    def series(self, point: str, plugin_type: str, name: str) -> Hist:
        key = (point, plugin_type, name)
        with self._lock:
            h = self.hists.get(key)
            if h is None:
                h = self.hists[key] = Hist(PLUGIN_BUCKETS)
        return h

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(n, self.doc, labels=self.labels) for n in self.names]

    def collect(self) -> Iterator[Metric]:
        rows = [(list(k), h.cumulative(), h.sum) for k, h in list(self.hists.items())]
        for n in self.names:
            fam = HistogramMetricFamily(n, self.doc, labels=self.labels)
            for labels, buckets, total in rows:
                fam.add_metric(labels, buckets, total)
            yield fam


PLUGIN_DURATION = _PluginDuration()
REGISTRY.register(PLUGIN_DURATION)


def scheduler_error(code: str, attempt: bool = True) -> None:
    """Count one scheduling failure under ``code``, and a failed attempt unless ``attempt`` is false (a
    shed). The labelled child is cached: ``labels()`` takes a lock and runs its checks on every call (3x
    the increment), and a shed storm counts one per request. Bounded: the codes are the scheduler's own."""
    child = _SCHEDULER_ERROR_CHILDREN.get(code)
    if child is None:
        child = _SCHEDULER_ERROR_CHILDREN[code] = SCHEDULER_ERRORS.labels(code=code)
    child.inc()
    if attempt:
        _FAILED_ATTEMPTS[0] += 1
