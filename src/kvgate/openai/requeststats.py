"""The per-request families the three OpenAI doors share, with the reference EPP's names, labels and buckets.

``inference_objective_request_total``, ``inference_objective_request_duration_seconds``,
``inference_objective_input_tokens``, ``inference_objective_output_tokens``,
``inference_objective_request_sizes``, ``inference_objective_response_sizes`` and
``inference_objective_normalized_time_per_output_token_seconds`` (labels ``model_name``,
``target_model_name``), and ``inference_objective_running_requests`` (label ``model_name``: requests
between ``start`` and ``stop``, what HPA / prometheus-adapter recipes scale on), kept in plain Python
lists and dicts per (model, target model) and turned into metric families only when ``/metrics`` is
scraped: the hot path does dict lookups, bisects and a few additions, with none of prometheus_client's
per-observation locking and checks. ``kvgate serve`` (``kvgate.gateway.metrics``, which binds
``observe``, ``start`` and ``stop`` directly), ``kvgate epp`` (``kvgate.extproc.metrics``) and
``kvgate serve --clusters`` (``kvgate.multicluster.serve``: ``observe`` only, so no running count, no
sizes) register one each; the last two bound their model labels first (``kvgate.openai.labels``).

``inference_objective_request_error_total`` (labels ``model_name``, ``target_model_name``,
``error_code``) is ``RequestErrors``, the same way: one collector the three doors register, each
counting a request once under the status its client got (or ``client_gone``, ``stream_cut``,
``epp_idle_timeout``), with the labels the door bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Set
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

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


# The reference EPP's (pkg/epp/metrics): request bodies 64 B .. 1 GiB, responses 1 B .. 64 KiB (its
# "8192 tokens x 4 characters", 32778 as it spells it), NTPOT 1 ms .. 10 s per output token.
_REQUEST_SIZE_BUCKETS = (
    *(float(1 << s) for s in range(6, 17)),  # 64 .. 65536
    *(float(1 << s) for s in range(17, 24)),  # 131072 .. 8 MiB
    *(float(1 << s) for s in range(24, 31)),  # 16 MiB .. 1 GiB
)
_RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
_NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class StatsChild:
    __slots__ = (
        "count",
        "duration",
        "input_tokens",
        "ntpot",
        "output_tokens",
        "request_sizes",
        "response_sizes",
    )

    def __init__(self) -> None:
        self.count = 0
        self.duration = Hist(_LATENCY_BUCKETS)
        self.input_tokens = Hist(_TOKEN_BUCKETS)
        self.output_tokens = Hist(_TOKEN_BUCKETS)
        self.ntpot = Hist(_NTPOT_BUCKETS)
        self.request_sizes = Hist(_REQUEST_SIZE_BUCKETS)
        self.response_sizes = Hist(_RESPONSE_SIZE_BUCKETS)


class RequestStats:
    """Collector for the per-request families, same names, labels and buckets as before."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str], StatsChild] = {}
        # Requests in flight per ``model_name`` (``start`` .. ``stop``); an entry stays at 0 once seen.
        self.running: dict[str, int] = {}

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
            (
                HistogramMetricFamily(
                    "inference_objective_request_sizes",
                    "Request body size in bytes, as the client sent it",
                    labels=labels,
                ),
                "request_sizes",
            ),
            (
                HistogramMetricFamily(
                    "inference_objective_response_sizes",
                    "Response body size in bytes, as the model server sent it (answers relayed whole)",
                    labels=labels,
                ),
                "response_sizes",
            ),
            (
                HistogramMetricFamily(
                    "inference_objective_normalized_time_per_output_token_seconds",
                    "Request latency over its completion tokens (from usage)",
                    labels=labels,
                ),
                "ntpot",
            ),
        ]
        for key, child in list(self.children.items()):
            total.add_metric(list(key), child.count)
            for fam, attr in fams:
                h: Hist = getattr(child, attr)
                fam.add_metric(list(key), h.cumulative(), h.sum)
        running = GaugeMetricFamily(
            "inference_objective_running_requests", "Requests in flight per model", labels=["model_name"]
        )
        # A name at 0 keeps its series while it has request series (a name only ever refused, or
        # counted under a label it no longer has, shows none at 0).
        named = {m for m, _ in self.children}
        for model, n in list(self.running.items()):
            if n or model in named:
                running.add_metric([model], n)
        yield total
        for fam, _ in fams:
            yield fam
        yield running

    def forget(self, names: Set[str]) -> None:
        """Removes every series whose ``model_name`` or ``target_model_name`` is one of ``names``
        (``kvgate.openai.labels``: names no longer seen); a name that comes back starts from 0."""
        for key in [k for k in self.children if k[0] in names or k[1] in names]:
            del self.children[key]
        for model in [m for m, n in self.running.items() if m in names and n <= 0]:
            del self.running[model]  # (a name in flight is held by its door, never forgotten)

    def start(self, model: str, target: str, request_bytes: int = -1) -> str:
        """A request whose model is known is in flight (``inference_objective_running_requests``) and,
        ``request_bytes`` >= 0, its body size observed (``inference_objective_request_sizes``: else
        ``observe`` may); ``stop(model)`` once, however it ends (the name returned: the label counted).
        The caller bounds the labels."""
        running = self.running
        running[model] = running.get(model, 0) + 1
        if request_bytes < 0:
            return model
        key = (model, target)
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = StatsChild()
        h = c.request_sizes
        h.counts[bisect_left(h.bounds, request_bytes)] += 1
        h.sum += request_bytes
        return model

    def sized(self, model: str, target: str, request_bytes: int) -> None:
        """A request's body size observed alone (``inference_objective_request_sizes``): a request that
        ended with no ``observe`` (``kvgate epp``: its stream cancelled or refused before a model server's
        answer ended; review s18-qa2 L2). The caller bounds the labels."""
        key = (model, target)
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = StatsChild()
        h = c.request_sizes
        h.counts[bisect_left(h.bounds, request_bytes)] += 1
        h.sum += request_bytes

    def stop(self, model: str) -> None:
        running = self.running
        running[model] = running.get(model, 1) - 1

    def observe(
        self,
        model: str,
        target: str,
        seconds: float,
        usage: Usage | None,
        response_bytes: int = -1,
        request_bytes: int = -1,
    ) -> None:
        """One request's end (the caller bounds the labels). ``response_bytes``: the response body's
        size where the door has it whole; ``request_bytes``: the request body's, where ``start`` did
        not observe it (-1: not observed)."""
        key = (model, target)
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = StatsChild()
        c.count += 1
        h = c.duration
        h.counts[bisect_left(h.bounds, seconds)] += 1
        h.sum += seconds
        if response_bytes >= 0:
            h = c.response_sizes
            h.counts[bisect_left(h.bounds, response_bytes)] += 1
            h.sum += response_bytes
        if request_bytes >= 0:
            h = c.request_sizes
            h.counts[bisect_left(h.bounds, request_bytes)] += 1
            h.sum += request_bytes
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
                per = seconds / n  # NTPOT, as the reference: latency over output tokens
                h = c.ntpot
                h.counts[bisect_left(h.bounds, per)] += 1
                h.sum += per


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


class BuildInfo:
    """``inference_extension_info`` and llm-d's twin ``llm_d_epp_info`` (labels ``commit``, ``build_ref``),
    value 1: which build answers. kvgate has no commit baked in: ``commit`` is empty, ``build_ref`` is
    the package version."""

    def __init__(self, build_ref: str) -> None:
        self.build_ref = build_ref

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for name in ("inference_extension_info", "llm_d_epp_info"):
            fam = GaugeMetricFamily(name, "Build of this kvgate", labels=["commit", "build_ref"])
            fam.add_metric(["", self.build_ref], 1)
            yield fam
