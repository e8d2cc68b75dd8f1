"""The per-request families the three OpenAI doors share, with the reference EPP's names, labels and buckets.

``inference_objective_request_total``, ``inference_objective_request_duration_seconds``,
``inference_objective_input_tokens`` and ``inference_objective_output_tokens`` (labels ``model_name``,
``target_model_name``), kept in plain Python lists per (model, target model) and turned into metric
families only when ``/metrics`` is scraped: the hot path does a dict lookup, a bisect and a few
additions, with none of prometheus_client's per-observation locking and checks. ``kvgate serve``
(``kvgate.gateway.metrics``, which binds ``observe`` directly), ``kvgate epp``
(``kvgate.extproc.metrics``) and ``kvgate serve --clusters`` (``kvgate.multicluster.serve``) register
one each; the last two bound their model labels first (``kvgate.openai.labels``).

``inference_objective_request_error_total`` (labels ``model_name``, ``target_model_name``,
``error_code``) is ``RequestErrors``, the same way: one collector the three doors register, each
counting a request once under the status its client got (or ``client_gone``, ``stream_cut``,
``epp_idle_timeout``), with the labels the door bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Set
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from kvgate.scheduling.fastmetrics import Hist
from kvgate.scheduling.types import Usage

_LATENCY_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_TOKEN_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)


class StatsChild:
    __slots__ = ("count", "duration", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.count = 0
        self.duration = Hist(_LATENCY_BUCKETS)
        self.input_tokens = Hist(_TOKEN_BUCKETS)
        self.output_tokens = Hist(_TOKEN_BUCKETS)


class RequestStats:
    """Collector for the per-request families, same names, labels and buckets as before."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str], StatsChild] = {}

    def describe(self) -> list[Metric]:
        return []  # families are known only at collect time; no duplicate-name check needed

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name", "target_model_name"]
        total = CounterMetricFamily("inference_objective_request", "Requests received", labels=labels)
        fams = [
            (
                HistogramMetricFamily(
                    "inference_objective_request_duration_seconds",
                    "Request latency, arrival to last byte",
                    labels=labels,
                ),
                "duration",
            ),
            (
                HistogramMetricFamily(
                    "inference_objective_input_tokens", "Prompt tokens (from usage)", labels=labels
                ),
                "input_tokens",
            ),
            (
                HistogramMetricFamily(
                    "inference_objective_output_tokens", "Completion tokens (from usage)", labels=labels
                ),
                "output_tokens",
            ),
        ]
        for key, child in list(self.children.items()):
            total.add_metric(list(key), child.count)
            for fam, attr in fams:
                h: Hist = getattr(child, attr)
                fam.add_metric(list(key), h.cumulative(), h.sum)
        yield total
        for fam, _ in fams:
            yield fam

    def forget(self, names: Set[str]) -> None:
        """Removes every series whose ``model_name`` or ``target_model_name`` is one of ``names``
        (``kvgate.openai.labels``: names no longer seen); a name that comes back starts from 0."""
        for key in [k for k in self.children if k[0] in names or k[1] in names]:
            del self.children[key]

    def observe(self, model: str, target: str, seconds: float, usage: Usage | None) -> None:
        """One request's end (the caller bounds the labels)."""
        key = (model, target)
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = StatsChild()
        c.count += 1
        h = c.duration
        h.counts[bisect_left(h.bounds, seconds)] += 1
        h.sum += seconds
        if usage is not None:
            # 0 = not reported (an embeddings usage has no completion_tokens): nothing to observe.
            if n := usage.prompt_tokens:
                h = c.input_tokens
                h.counts[bisect_left(h.bounds, n)] += 1
                h.sum += n
            if n := usage.completion_tokens:
                h = c.output_tokens
                h.counts[bisect_left(h.bounds, n)] += 1
                h.sum += n


ERRORS_HELP: Final = (
    "Requests refused or failed, once each, by the HTTP status the client got "
    "(or client_gone, stream_cut, epp_idle_timeout)"
)


class RequestErrors:
    """Collector for ``inference_objective_request_error_total``: a plain dict of counts per
    (model, target model, error code), turned into a counter family when ``/metrics`` is scraped (no
    per-increment lock; a shed or 429 storm counts one per request). The caller bounds the labels:
    ``kvgate serve``'s models come from its config, the other doors' from ``kvgate.openai.labels``;
    the codes are HTTP statuses and the few named ends above."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "inference_objective_request_error",
            ERRORS_HELP,
            labels=["model_name", "target_model_name", "error_code"],
        )
        for key, n in list(self.counts.items()):
            fam.add_metric(list(key), n)
        yield fam

    def forget(self, names: Set[str]) -> None:
        """Removes every series whose ``model_name`` or ``target_model_name`` is one of ``names``."""
        for key in [k for k in self.counts if k[0] in names or k[1] in names]:
            del self.counts[key]

    def inc(self, model: str, target: str, code: str) -> None:
        key = (model, target, code)
        self.counts[key] = self.counts.get(key, 0) + 1
