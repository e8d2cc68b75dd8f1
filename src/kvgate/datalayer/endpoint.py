"""An endpoint (one model-server port of a pool) and the live state the picker reads about it.

Two kinds of state, kept apart on purpose:
- ``metrics``: what the server itself reports (scraped from ``/metrics``), with the time it was read,
  so staleness is explicit;
- ``inflight``: what this picker has dispatched and not yet seen finish. It has no scrape lag, which
  is why kvgate's default profile leans on it.

Time is always a float in seconds from an injected clock (``time.monotonic`` in production, the
virtual clock in the fleet simulator), never read here directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The reference EPP's metricsStalenessThreshold: metrics older than this count as saturated.
METRICS_STALENESS_S = 0.2


@dataclass(slots=True)
class EndpointMetrics:
    """Server-reported signals, engine-neutral (see datalayer mappings per engine)."""

    waiting_queue_size: int = 0
    running_requests: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    block_size: int | None = None  # tokens per KV block, from cache_config_info
    num_gpu_blocks: int | None = None
    max_lora: int | None = None
    running_loras: frozenset[str] = frozenset()
    waiting_loras: frozenset[str] = frozenset()
    updated_at: float | None = None  # clock time of the last successful scrape; None = never
    # This gateway's own load when the page was read (set by ``MetricsScraper``; other feeds leave
    # ``own_pending`` None). ``own_explained``: the page showed no more requests (waiting + running)
    # than this gateway had in flight there, i.e. no load from elsewhere. ``own_pending``: its requests
    # there without a first token yet (``InFlight.requests - decoding``) when the page was asked for,
    # less those whose first token arrived while it was (the page can show them running);
    # ``own_sent_tokens``: ``InFlight.sent_tokens - sent_base`` then, less the tokens of its requests
    # without a first token that the page cannot hold (``unstarted_tokens`` x the share of those
    # requests beyond the ones the page shows running besides its decoding ones: a request in prefill
    # holds its blocks, a waiting one or one not at the server yet none). Its own load is read before
    # the request for the page is sent. ``own_prefill``: of ``own_pending``, those the page showed
    # running (in prefill: not in its waiting count); ``own_started``: ``InFlight.started -
    # started_base`` after the page (first tokens since then are counted from it). The utilization
    # detector carries such a page forward by this gateway's accounting since
    # (``ownLoadStalenessThreshold``, kvgate.flowcontrol.saturation).
    own_explained: bool = False
    own_pending: int | None = None
    own_sent_tokens: int = 0
    own_prefill: int = 0
    own_started: int = 0
    # The model names the server's own metrics carry (the ``model_name`` label of its waiting and
    # running series: vLLM's ``--served-model-name``, SGLang's, kvgate's simulator's), kept from the
    # last page that had any; with the LoRA adapters above, what the server says it serves.
    models: frozenset[str] = frozenset()


@dataclass(slots=True)
class InFlight:
    """The picker's own accounting of requests sent to an endpoint and not yet finished.

    Counted in sequences, as the server's running and waiting counts are: a request with ``n`` choices
    (x the prompts of a completions batch) is ``InferenceRequest.sequences`` of them in ``requests``,
    ``decoding`` and ``started``, and ``n`` x its output in ``pending_decode_tokens`` (review s21-qa F5).
    Request counters (metrics, flow control's per-flow counts, ``calls``) still count it once."""

    requests: int = 0
    # Prompt tokens of dispatched requests that have not produced a first token yet (still in prefill
    # or queued), counting only tokens the picker expects to miss the prefix cache.
    pending_prefill_tokens: int = 0
    # Expected decode tokens still to generate (max_tokens or an estimate, per sequence) over those running.
    pending_decode_tokens: int = 0
    # Requests that have produced their first token and are decoding.
    decoding: int = 0
    # Learned pace: seconds per token-slot (decode time per token over the batch it ran in, plus the
    # weights' share; ``kvgate.scheduling.speed``), 0 until learned. Compares replicas of unequal speed
    # whatever their load: lower is faster.
    pace: float = 0.0
    # Tokens of every request ever dispatched there (the KV it takes: its prompt, less the prefix a
    # request of this process in flight there already holds (``datalayer.prefixrefs``), + the output it
    # can decode within the detector's horizon), a running total that only grows (across ``--workers``
    # restarts too: ``gateway.shared_inflight``).
    sent_tokens: int = 0
    # The part of ``sent_tokens`` that belongs to requests without a first token yet. A page read at
    # some moment holds no KV for those (waiting at the server, or not there yet), so the KV that this
    # gateway's requests can take after it is at most the increase of ``sent_tokens`` since, plus this
    # when the page was asked for. (Requests running then can still grow by their decode: not counted.)
    unstarted_tokens: int = 0
    # First tokens ever seen there (a count that only grows; with ``--workers`` every worker's, shared
    # like ``sent_tokens``): the scraper takes its increase during a GET as requests started then,
    # which finishes during the same GET cannot hide (the net change of ``decoding`` would).
    started: int = 0
    # The part of ``sent_tokens`` / ``started`` that ``--workers``' first fold of this ``InFlight``
    # brought in (the fleet's lifetime totals): before any page this process read, never "since" one.
    sent_base: int = 0
    started_base: int = 0
    # Requests, each once whatever its sequences: the peers' own load counts (sglang-router's in-flight
    # requests, a least-request router's), which their baseline models read (review s21-fixes-a L7).
    calls: int = 0
    # Of the pending sequences (``requests - decoding``), those flow control sent as certain misses
    # (``flowControl.packCertainMisses``: held back and past their TTFT deadline by the service p90),
    # which the late pick packs together. Here, not in the Director, so that ``--workers`` shares it with
    # the pending count it is compared with (``gateway.shared_inflight``; wk32's finding, wk33).
    certain_misses: int = 0

    @property
    def busy(self) -> bool:
        """Requests still counted here (a removed endpoint's ``InFlight`` is kept while so: qa35a F1)."""
        return self.requests > 0 or self.calls > 0


@dataclass(slots=True, eq=False)
class Endpoint:
    """One schedulable target: ``address`` is ``ip:port`` (what the gateway connects to)."""

    address: str
    pool: str = "default"
    engine: str = "vllm"  # vllm | sglang | trtllm-serve | triton-tensorrt-llm
    labels: dict[str, str] = field(default_factory=dict)
    # The reference's name for a pod's endpoint, ``<pod>-rank-<i>`` (i: the port's index among the pool's
    # targetPorts), set by Kubernetes discovery; empty for a static endpoint (its address names it).
    name: str = ""
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    inflight: InFlight = field(default_factory=InFlight)
    # False while ejected after repeated failures (set by the front doors' health tracking).
    healthy: bool = True
    # Consecutive failed /metrics scrapes (the scraper's count; kvgate.datalayer.health reads it).
    scrape_failures: int = 0
    # When a scrape last got a 2xx-4xx HTTP answer (the scraper's clock): a server that answers its
    # /metrics with 404 (SGLang without --enable-metrics) is alive (kvgate.datalayer.health); a 5xx (a
    # sidecar or LB in front of a dead server, a draining server) is no evidence it serves.
    answered_at: float | None = None
    # Ejected, and seen down by its scrapes since its ejection (the gateway's probe loop marks it,
    # ``kvgate.gateway.health``; cleared at each ejection): answering its scrapes again, it came back from
    # an outage (``kvgate.datalayer.health.REVIVED``). One ejected for failing requests while its scrapes
    # answered has not (review s30-rev-d30 F2).
    down_since_ejected: bool = False
    # When a request to it last succeeded (the front doors' health tracking's clock,
    # ``kvgate.datalayer.ejection``): it serves, whatever its scrapes say (review s30-rev-d30 F1).
    served_at: float | None = None

    def __hash__(self) -> int:
        return hash(self.address)

    def __repr__(self) -> str:
        return f"Endpoint({self.address})"
