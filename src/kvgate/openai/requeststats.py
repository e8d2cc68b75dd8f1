"""The per-request families the three OpenAI doors share, with the reference EPP's names, labels and buckets.

``inference_objective_request_total``, ``inference_objective_request_duration_seconds``,
``inference_objective_input_tokens``, ``inference_objective_output_tokens``,
``inference_objective_prompt_cached_tokens``, ``inference_objective_request_sizes``,
``inference_objective_response_sizes`` and
``inference_objective_normalized_time_per_output_token_seconds`` (labels ``model_name``,
``target_model_name``; the request total ``priority`` too, as upstream's newer label set),
``inference_objective_running_requests`` (label ``model_name``: requests
between ``start`` and ``stop``, what HPA / prometheus-adapter recipes scale on), and llm-d's
``llm_d_epp_request_*`` twins (labels ``model_name``, ``target_model_name``, ``fairness_id``,
``priority``; its TTFT, streaming TPOT and streaming ITL histograms too, which the reference's families
lack). A door hands each request's end over once, as one ``RequestEnd`` record (``observe``). Kept
in plain Python lists and dicts per (model, target model, fairness id, priority), the reference's
families summed over the flow labels, and turned into metric families only when ``/metrics`` is
scraped: the hot path does dict lookups, bisects and a few additions, with none of prometheus_client's
per-observation locking and checks. ``kvgate serve`` (``kvgate.gateway.metrics``, which binds
``observe``, ``start`` and ``stop`` directly), ``kvgate epp`` (``kvgate.extproc.metrics``) and
``kvgate serve --clusters`` (``kvgate.multicluster.serve``) register one each; the last two bound their
model labels first (``kvgate.openai.labels``), all three their fairness ids (``FairnessLabels``).

``inference_objective_request_error_total`` (labels ``model_name``, ``target_model_name``,
``error_code``) and llm-d's ``llm_d_epp_request_error_total`` (+ ``fairness_id``, ``priority``) are
``RequestErrors``, the same way: one collector the three doors register, each counting a request once
under the status its client got (or ``client_gone``, ``stream_cut``, ``epp_idle_timeout``), with the
labels the door bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Set
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from kvgate.openai.labels import OTHER_FAIRNESS, FairnessLabels
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


# The reference EPP's (GIE ``pkg/epp/metrics``): request bodies 64 B .. 1 GiB, responses 1 B .. 64 KiB (its
# "8192 tokens x 4 characters", 32778 as it spells it), NTPOT 1 ms .. 10 s per output token, output
# tokens 1 .. 8192.
_REQUEST_SIZE_BUCKETS = (
    *(float(1 << s) for s in range(6, 17)),  # 64 .. 65536
    *(float(1 << s) for s in range(17, 24)),  # 131072 .. 8 MiB
    *(float(1 << s) for s in range(24, 31)),  # 16 MiB .. 1 GiB
)
_RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
_OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# llm-d's (``llm_d_epp_request_*``, llm-d-router ``pkg/epp/metrics``): its token and response ladders
# are the reference's, 32778 included (only request sizes spell 32768, a power of two, as here); TTFT
# 5 ms .. 120 s (labels + ``streaming``), streaming TPOT 0.5 ms .. 2 s.
_LLMD_TOKEN_BUCKETS = _TOKEN_BUCKETS
_LLMD_RESPONSE_SIZE_BUCKETS = _RESPONSE_SIZE_BUCKETS
_TTFT_BUCKETS = (*_LATENCY_BUCKETS[: _LATENCY_BUCKETS.index(120) + 1],)
_TPOT_BUCKETS = (
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2,
    0.3, 0.4, 0.5, 0.6, 0.8, 1, 2,
)  # fmt: skip
# llm-d's inter-token latency (``llm_d_epp_request_streaming_itl_seconds``): the gaps between a stream's
# consecutive response body chunks, 1 ms .. 2 s.
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2)
# One histogram per quantity, on the union of the ladders of the families read from it (a value is
# bisected once; each family's buckets are picked from the union's at scrape: output tokens' 1 .. 8192
# from the token ladder).
_TOKEN_UNION = tuple(sorted({*_TOKEN_BUCKETS, *_LLMD_TOKEN_BUCKETS}))
_RESPONSE_UNION = tuple(sorted({*_RESPONSE_SIZE_BUCKETS, *_LLMD_RESPONSE_SIZE_BUCKETS}))

# A request's flow labels (``fairness_id``, ``priority``) on llm-d's families: none known (a refusal
# before the request was read, ``kvgate serve --clusters``' priority).
NO_FLOW: Final = ("", "")
# ``observe``'s ``first`` for a stream whose first byte was not seen (no TTFT observed).
NO_FIRST_BYTE: Final = -2.0
_PRIORITY: dict[int | None, str] = {0: "0", None: ""}  # (None: not known to the door)


class ChunkGaps:
    """A stream's inter-token latency as llm-d measures it: the time between its consecutive response
    body chunks, binned as they come (``tick`` at each chunk's arrival, on the door's clock; the first
    only starts the count). ``RequestEnd.itl``; O(1) per chunk, a few dozen bytes per stream."""

    __slots__ = ("at", "counts", "sum")

    def __init__(self) -> None:
        self.at = -1.0  # (-1: no chunk yet)
        self.counts = [0] * (len(_ITL_BUCKETS) + 1)
        self.sum = 0.0

    def tick(self, now: float, _bounds: tuple[float, ...] = _ITL_BUCKETS) -> None:
        at = self.at
        self.at = now
        if at >= 0.0:
            gap = now - at
            self.counts[bisect_left(_bounds, gap)] += 1
            self.sum += gap


@dataclass(slots=True)
class RequestEnd:
    """One request's end as a door observes it, once (``RequestStats.observe``; the doors' ``observe`` /
    ``request_done`` pass it on as it is). ``model`` / ``target``: its model names (the client's, the one
    it went to; each door bounds them before they are labels); ``seconds``: arrival to its end;
    ``usage``: a 2xx's (None: none observed); ``response_bytes``: the response body's size where the door
    has it (-1: not observed); ``request_bytes``: the request body's, where ``start`` did not observe it
    (-1: not observed); ``flow``: its ``RequestStats.flow`` labels; ``first``: a streamed answer's seconds
    to its first byte (its TTFT; -1: not streamed, the TTFT is ``seconds``, as the reference's;
    ``NO_FIRST_BYTE``: a stream whose first byte was not seen, no TTFT, as the reference records none);
    ``itl``: a stream's chunk gaps (None: not a stream, or none measured)."""

    model: str
    target: str
    seconds: float
    usage: Usage | None = None
    response_bytes: int = -1
    request_bytes: int = -1
    flow: tuple[str, str] = NO_FLOW
    first: float = -1.0
    itl: ChunkGaps | None = None


class StatsChild:
    """One (model, target model, fairness id, priority)'s per-request histograms."""

    __slots__ = (
        "cached_tokens",
        "count",
        "duration",
        "input_tokens",
        "itl",
        "ntpot",
        "output_tokens",
        "request_sizes",
        "response_sizes",
        "tpot",
        "ttft",
        "ttft_stream",
    )

    def __init__(self) -> None:
        self.count = 0
        self.duration = Hist(_LATENCY_BUCKETS)
        self.input_tokens = Hist(_TOKEN_UNION)
        self.output_tokens = Hist(_TOKEN_UNION)
        self.cached_tokens = Hist(_TOKEN_UNION)
        self.ntpot = Hist(_NTPOT_BUCKETS)
        self.request_sizes = Hist(_REQUEST_SIZE_BUCKETS)
        self.response_sizes = Hist(_RESPONSE_UNION)
        self.ttft = Hist(_TTFT_BUCKETS)  # non-streamed answers: the request's duration
        self.ttft_stream = Hist(_TTFT_BUCKETS)
        self.tpot = Hist(_TPOT_BUCKETS)
        self.itl = Hist(_ITL_BUCKETS)


def _picks(union: tuple[float, ...], bounds: tuple[float, ...]) -> tuple[int, ...]:
    """The union's bucket index of each of ``bounds`` (each one of the union's)."""
    return tuple(union.index(b) for b in bounds)


def _merge(into: list[int] | None, counts: list[int]) -> list[int]:
    if into is None:
        return list(counts)
    for i, c in enumerate(counts):
        into[i] += c
    return into


def _cumulative(counts: list[int], bounds: tuple[float, ...], picks: tuple[int, ...] | None) -> list[Any]:
    """Prometheus' cumulative buckets of ``counts`` (a histogram on its union ladder; ``picks``: the
    family's bounds' indexes in it, None: the ladder is the family's own)."""
    acc, run = 0, []
    for c in counts:
        acc += c
        run.append(acc)
    if picks is None:
        out = [(floatToGoString(b), run[i]) for i, b in enumerate(bounds)]
    else:
        out = [(floatToGoString(b), run[i]) for i, b in zip(picks, bounds, strict=True)]
    out.append(("+Inf", acc))
    return out


# (family, help, child attribute, its buckets, picked from the attribute's union or None) per histogram:
# the reference EPP's, labelled (model_name, target_model_name) ...
_OBJECTIVE_HISTS = (
    ("inference_objective_request_duration_seconds", "Request latency, arrival to last byte", "duration",
     _LATENCY_BUCKETS, None),
    ("inference_objective_input_tokens", "Prompt tokens (from usage)", "input_tokens", _TOKEN_BUCKETS,
     _picks(_TOKEN_UNION, _TOKEN_BUCKETS)),
    ("inference_objective_output_tokens", "Completion tokens (from usage)", "output_tokens",
     _OUTPUT_TOKEN_BUCKETS, _picks(_TOKEN_UNION, _OUTPUT_TOKEN_BUCKETS)),
    ("inference_objective_prompt_cached_tokens", "Prompt tokens read from the cache (from usage)",
     "cached_tokens", _TOKEN_BUCKETS, _picks(_TOKEN_UNION, _TOKEN_BUCKETS)),
    ("inference_objective_request_sizes", "Request body size in bytes, as the client sent it",
     "request_sizes", _REQUEST_SIZE_BUCKETS, None),
    ("inference_objective_response_sizes", "Response body size in bytes",
     "response_sizes", _RESPONSE_SIZE_BUCKETS, _picks(_RESPONSE_UNION, _RESPONSE_SIZE_BUCKETS)),
    ("inference_objective_normalized_time_per_output_token_seconds",
     "Request latency over its completion tokens (from usage)", "ntpot", _NTPOT_BUCKETS, None),
)  # fmt: skip
# ... and llm-d's, labelled (model_name, target_model_name, fairness_id, priority).
_LLMD_HISTS = (
    ("llm_d_epp_request_duration_seconds", "End-to-end request latency distribution in seconds.",
     "duration", _LATENCY_BUCKETS, None),
    ("llm_d_epp_request_size_bytes", "Incoming request body size distribution in bytes.", "request_sizes",
     _REQUEST_SIZE_BUCKETS, None),
    ("llm_d_epp_response_size_bytes", "Outgoing response body size distribution in bytes.",
     "response_sizes", _LLMD_RESPONSE_SIZE_BUCKETS, _picks(_RESPONSE_UNION, _LLMD_RESPONSE_SIZE_BUCKETS)),
    ("llm_d_epp_request_input_tokens", "Input token count distribution per request.", "input_tokens",
     _LLMD_TOKEN_BUCKETS, _picks(_TOKEN_UNION, _LLMD_TOKEN_BUCKETS)),
    ("llm_d_epp_request_output_tokens", "Output token count distribution per request.", "output_tokens",
     _OUTPUT_TOKEN_BUCKETS, _picks(_TOKEN_UNION, _OUTPUT_TOKEN_BUCKETS)),
    ("llm_d_epp_request_cached_tokens", "Distribution of prompt tokens read from cache per request, as "
     "reported by the model server in the response.", "cached_tokens", _LLMD_TOKEN_BUCKETS,
     _picks(_TOKEN_UNION, _LLMD_TOKEN_BUCKETS)),
    ("llm_d_epp_request_ntpot_seconds", "Normalized time per output token in seconds (end-to-end latency "
     "divided by output token count).", "ntpot", _NTPOT_BUCKETS, None),
    ("llm_d_epp_request_streaming_tpot_seconds", "Average time per output token in seconds for streaming "
     "requests, computed as (e2e - TTFT) / (output_tokens - 1).", "tpot", _TPOT_BUCKETS, None),
    ("llm_d_epp_request_streaming_itl_seconds", "Inter-token latency in seconds for streaming requests, "
     "measured as the time between consecutive response body chunks.", "itl", _ITL_BUCKETS, None),
)  # fmt: skip
_MODEL = ["model_name", "target_model_name"]
_PRIORITY_LABELS = ["model_name", "target_model_name", "priority"]
_FLOW = ["model_name", "target_model_name", "fairness_id", "priority"]


class RequestStats:
    """Collector for the per-request families. Kept per (model, target model, fairness id, priority):
    llm-d's ``llm_d_epp_request_*`` families are those series as they are, the reference's
    ``inference_objective_*`` ones their sums over the flow labels (summed at scrape)."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str, str, str], StatsChild] = {}
        # Requests in flight per (model, target, fairness id, priority) (``start`` .. ``stop``); an entry
        # stays at 0 once seen.
        self.running: dict[tuple[str, str, str, str], int] = {}
        self.fairness = FairnessLabels()

    def describe(self) -> list[Metric]:
        return []  # families are known only at collect time; no duplicate-name check needed

    def collect(self) -> Iterator[Metric]:
        children = list(self.children.items())
        # The reference's families: the flows' series summed per (model, target).
        by_model: dict[tuple[str, str], list[StatsChild]] = {}
        for key, child in children:
            by_model.setdefault((key[0], key[1]), []).append(child)
        # (upstream's newer label set for this one family: + ``priority``, llm-d-router's
        # ``modelWithPriorityLabels``; the flows summed per (model, target, priority))
        per_priority: dict[tuple[str, str, str], int] = {}
        for key, child in children:
            mtp = (key[0], key[1], key[3])
            per_priority[mtp] = per_priority.get(mtp, 0) + child.count
        total = CounterMetricFamily(
            "inference_objective_request", "Requests received", labels=_PRIORITY_LABELS
        )
        for mtp, n in per_priority.items():
            total.add_metric(list(mtp), n)
        yield total
        for name, doc, attr, bounds, picks in _OBJECTIVE_HISTS:
            fam = HistogramMetricFamily(name, doc, labels=_MODEL)
            for mt, group in by_model.items():
                counts: list[int] | None = None
                s = 0.0
                for c in group:
                    h: Hist = getattr(c, attr)
                    counts = _merge(counts, h.counts)
                    s += h.sum
                assert counts is not None
                fam.add_metric(list(mt), _cumulative(counts, bounds, picks), s)
            yield fam
        running = GaugeMetricFamily(
            "inference_objective_running_requests", "Requests in flight per model", labels=["model_name"]
        )
        # A name at 0 keeps its series while it has request series (a name only ever refused, or
        # counted under a label it no longer has, shows none at 0).
        per_model: dict[str, int] = {}
        for key, n in list(self.running.items()):
            per_model[key[0]] = per_model.get(key[0], 0) + n
        named = {m for m, _ in by_model}
        for model, n in per_model.items():
            if n or model in named:
                running.add_metric([model], n)
        yield running
        # llm-d's: each flow's series as kept.
        total = CounterMetricFamily("llm_d_epp_request", "Total number of processed requests.", labels=_FLOW)
        for key, c in children:
            total.add_metric(list(key), c.count)
        yield total
        for name, doc, attr, bounds, picks in _LLMD_HISTS:
            fam = HistogramMetricFamily(name, doc, labels=_FLOW)
            for key, c in children:
                h = getattr(c, attr)
                fam.add_metric(list(key), _cumulative(h.counts, bounds, picks), h.sum)
            yield fam
        fam = HistogramMetricFamily(
            "llm_d_epp_request_ttft_seconds",
            "Time to first token in seconds, measured from request received to first response byte. For "
            "non-streaming requests, this equals total request duration.",
            labels=[*_FLOW, "streaming"],
        )
        for key, c in children:
            for h, streaming in ((c.ttft, "false"), (c.ttft_stream, "true")):
                if any(h.counts):
                    fam.add_metric([*key, streaming], _cumulative(h.counts, _TTFT_BUCKETS, None), h.sum)
        yield fam
        running = GaugeMetricFamily(
            "llm_d_epp_request_running", "Current number of active running requests.", labels=_FLOW
        )
        for key, n in list(self.running.items()):
            if n or key in self.children:
                running.add_metric(list(key), n)
        yield running

    def forget(self, names: Set[str]) -> None:
        """Removes every series whose ``model_name`` or ``target_model_name`` is one of ``names``
        (``kvgate.openai.labels``: names no longer seen); a name that comes back starts from 0."""
        for key in [k for k in self.children if k[0] in names or k[1] in names]:
            del self.children[key]
        for key in [k for k, n in self.running.items() if (k[0] in names or k[1] in names) and n <= 0]:
            del self.running[key]  # (a name in flight is held by its door, never forgotten)

    def flow(self, fairness: str, priority: int | None) -> tuple[str, str]:
        """A request's flow labels (``fairness_id`` bounded: ``FairnessLabels``; ``priority``)."""
        p = _PRIORITY.get(priority)
        return (
            fairness if fairness in self.fairness.labelled else OTHER_FAIRNESS,
            str(priority) if p is None else p,
        )

    def start(
        self,
        model: str,
        target: str,
        request_bytes: int = -1,
        fairness: str = "",
        priority: int | None = 0,
        run: bool = True,
    ) -> tuple[str, str, str, str]:
        """A request whose model is known is in flight (``inference_objective_running_requests``,
        ``llm_d_epp_request_running``) and, ``request_bytes`` >= 0, its body size observed (the request
        size families: else ``observe`` may); its fairness id counted toward a label of its own
        (``FairnessLabels.count``). ``stop`` with what this returns, once, however it ends. The caller
        bounds the model labels. ``run`` False: not running yet (flow control may hold it), from ``run``
        on, as the reference counts a request from its dispatch (qa32b Q8); ``stop`` only if it ran."""
        labels = self.fairness
        if fairness not in labels.labelled:  # (a labelled id is counted no more)
            labels.count(fairness)
            if fairness not in labels.labelled:
                fairness = OTHER_FAIRNESS
        p = _PRIORITY.get(priority)
        key = (model, target, fairness, str(priority) if p is None else p)
        if run:
            running = self.running
            running[key] = running.get(key, 0) + 1
        if request_bytes >= 0:
            c = self.children.get(key)
            if c is None:
                c = self.children[key] = StatsChild()
            h = c.request_sizes
            h.counts[bisect_left(h.bounds, request_bytes)] += 1
            h.sum += request_bytes
        return key

    def sized(self, model: str, target: str, request_bytes: int, flow: tuple[str, str] = NO_FLOW) -> None:
        """A request's body size observed alone (the request size families): a request that ended with
        no ``observe`` (``kvgate epp``: its stream cancelled or refused before a model server's answer
        ended; review s18-qa2 L2). The caller bounds the labels."""
        key = (model, target, flow[0], flow[1])
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = StatsChild()
        h = c.request_sizes
        h.counts[bisect_left(h.bounds, request_bytes)] += 1
        h.sum += request_bytes

    def run(self, key: tuple[str, str, str, str]) -> None:
        """The request of ``key`` runs from now: ``start``ed with ``run`` False (``kvgate epp``: at its
        dispatch), or after a ``stop`` while flow control held it (``kvgate serve``; qa32b Q8)."""
        running = self.running
        running[key] = running.get(key, 0) + 1

    def stop(self, key: tuple[str, str, str, str]) -> None:
        running = self.running
        running[key] = running.get(key, 1) - 1

    def observe(self, end: RequestEnd) -> None:
        """One request's end (``RequestEnd``; the caller bounds its labels)."""
        model, target, seconds, usage = end.model, end.target, end.seconds, end.usage
        first, flow = end.first, end.flow
        key = (model, target, flow[0], flow[1])
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = StatsChild()
        c.count += 1
        h = c.duration
        h.counts[bisect_left(h.bounds, seconds)] += 1
        h.sum += seconds
        if first >= 0:
            h = c.ttft_stream
            h.counts[bisect_left(h.bounds, first)] += 1
            h.sum += first
        elif first == -1.0:
            h = c.ttft
            h.counts[bisect_left(h.bounds, seconds)] += 1
            h.sum += seconds
        if (n := end.response_bytes) >= 0:
            h = c.response_sizes
            h.counts[bisect_left(h.bounds, n)] += 1
            h.sum += n
        if (n := end.request_bytes) >= 0:
            h = c.request_sizes
            h.counts[bisect_left(h.bounds, n)] += 1
            h.sum += n
        if (gaps := end.itl) is not None:
            h = c.itl
            counts = h.counts
            for i, k in enumerate(gaps.counts):
                counts[i] += k
            h.sum += gaps.sum
        if usage is not None:
            # 0 = not reported (an embeddings usage has no completion_tokens): nothing to observe.
            if n := usage.prompt_tokens:
                h = c.input_tokens
                h.counts[bisect_left(h.bounds, n)] += 1
                h.sum += n
            if usage.cached_reported:  # (0 cached is a value when reported, as the reference's)
                n = usage.cached_tokens
                h = c.cached_tokens
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
                if first >= 0 and n > 1:  # TPOT: a stream's time after its first byte per later token
                    per = (seconds - first) / (n - 1)
                    h = c.tpot
                    h.counts[bisect_left(h.bounds, per)] += 1
                    h.sum += per


ERRORS_HELP: Final = (
    "Requests refused or failed, once each, by the HTTP status the client got "
    "(or client_gone, stream_cut, epp_idle_timeout)"
)


class RequestErrors:
    """Collector for ``inference_objective_request_error_total`` and llm-d's
    ``llm_d_epp_request_error_total`` (labels + ``fairness_id``, ``priority``): plain dicts of counts
    per (model, target model, error code) and per (model, target model, fairness id, priority, error
    code), turned into counter families when ``/metrics`` is scraped (no per-increment lock: a shed or
    429 storm counts one per request). The caller bounds the labels: ``kvgate serve``'s models come
    from its config, the other doors' from ``kvgate.openai.labels``, the flows' from
    ``RequestStats.flow``; the codes are HTTP statuses and the few named ends above."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.flows: dict[tuple[str, str, str, str, str], int] = {}

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
        fam = CounterMetricFamily(
            "llm_d_epp_request_error", "Total number of request errors.", labels=[*_FLOW, "error_code"]
        )
        for key5, n in list(self.flows.items()):
            fam.add_metric(list(key5), n)
        yield fam

    def forget(self, names: Set[str]) -> None:
        """Removes every series whose ``model_name`` or ``target_model_name`` is one of ``names``."""
        for key in [k for k in self.counts if k[0] in names or k[1] in names]:
            del self.counts[key]
        for key5 in [k for k in self.flows if k[0] in names or k[1] in names]:
            del self.flows[key5]

    def inc(self, model: str, target: str, code: str, flow: tuple[str, str] = NO_FLOW) -> None:
        key = (model, target, code)
        self.counts[key] = self.counts.get(key, 0) + 1
        key5 = (model, target, flow[0], flow[1], code)
        self.flows[key5] = self.flows.get(key5, 0) + 1


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
