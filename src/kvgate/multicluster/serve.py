"""``kvgate serve --clusters FILE``: the global (multi-cluster) OpenAI-compatible gateway.

Clusters are the candidates: each request's body is parsed once (``kvgate.openai.request``), the policy
orders the clusters from their aggregates, and the router sends it (Endpoint mode, else Parent mode,
else the next cluster). Admin routes on the same port: ``/metrics``, ``/healthz``, ``/readyz`` (some
cluster usable), ``/v1/clusters`` (what this gateway knows of each cluster); with ``--admin-port`` on that
port instead (HTTPS with ``--admin-tls``, mutual TLS with ``--client-ca``). ``GET /v1/models``: the names
the clusters' aggregates list.

It runs on the single-cluster gateway's client-facing front (``kvgate.httpfront``), so it has the same
hardening: OpenAI-style JSON errors (400 bad body, 404 unknown path, 405 wrong method, 413 body over
``limits.maxBodyBytes``, 408 header/body deadlines; when no cluster started the request, 429 if one was
at capacity (``Retry-After``: the smallest the clusters gave, 1 to ``RETRY_AFTER_MAX_S`` = 3600 s),
else the status the clusters refused it with when every one refused (a remote EPP's 413, ..., with its
own error body), else 503: ``router.no_route``; 503 over ``limits.maxConnections``), and the send
deadline for clients that stop reading (the connection is aborted, which cancels the request upstream
and on the remote EPP).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kvgate.aio import STOP_LIMIT_S, cancel_and_wait, stop_to_the_end
from kvgate.httpfront import offload
from kvgate.httpfront.budget import ByteBudget
from kvgate.httpfront.metrics import FrontGauges, LogLinesDropped, ReloadMetrics
from kvgate.httpfront.server import (
    READ_METHODS,
    FrontLimits,
    FrontServer,
    Handler,
    Request,
    Response,
    StreamResponse,
    get_only,
    json_error,
    read_only,
)
from kvgate.k8s.lease import check_one_time
from kvgate.k8s.stalepolicy import StalenessPolicy, hub_policy
from kvgate.multicluster.clusters import FALLBACKS_KEY, ClustersConfig, ClustersError, ClustersFile
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.lookups import ClusterLocator, known_home, lookup
from kvgate.multicluster.policies import ClusterRequest, fresh_seed, prompt_key
from kvgate.multicluster.router import ENDPOINT, Attempt, Deadline, GlobalRouter, NoRoute, Routed
from kvgate.multicluster.source import ClusterSource
from kvgate.multicluster.state import models_listed
from kvgate.openai.labels import GRACE_S, ModelLabels
from kvgate.openai.progress import Progress, progress_events, progress_piece
from kvgate.openai.protocol import (
    CUT_WRITE_S,
    DEFAULT_FAIRNESS_ID,
    FAIRNESS_ID,
    LLMD_FAIRNESS_ID,
    LLMD_MODEL_REWRITE,
    MODEL_REWRITE,
    REQUEST_ID,
    RETRY_AFTER_DEFAULT,
    api_error_body,
    drain_cut_event,
    sse_error_event,
)
from kvgate.openai.request import (
    MODELS_PREFIX,
    ROUTED_PATHS,
    STREAM_USAGE_PATHS,
    BodyError,
    ParsedBody,
    kind_for_path,
    parse_body,
)
from kvgate.openai.requeststats import (
    NO_FIRST_BYTE,
    NO_FLOW,
    ChunkGaps,
    RequestEnd,
    RequestErrors,
    RequestStats,
)
from kvgate.openai.responses import (
    LOOKUP_PREFIX,
    RESPONSES_PATH,
    ResponseHomes,
    ResponseIdReader,
    previous_response_id,
)
from kvgate.openai.sse import EventEdge
from kvgate.openai.usage import usage_from_body
from kvgate.requestid import acceptable as acceptable_rid
from kvgate.requestid import shown as rid_shown
from kvgate.scheduling.types import Usage
from kvgate.stderrlog import say

log = logging.getLogger("kvgate.multicluster")

# A whole (non-stream) 2xx body held past this, or past the process-wide budget all held bodies share,
# is relayed on without its usage read (bounded memory).
_USAGE_BODY_MAX = 16 << 20
_USAGE_HELD = ByteBudget(256 << 20)

# A response body the cluster stopped sending mid-way (the pod or its link failed, or the remote EPP
# relaying a rewritten stream did).
_CUT = (aiohttp.ClientError, OSError, TimeoutError)


class _Metrics:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # ``model_name`` values bounded (kvgate.openai.labels): the clusters file names no models, so a
        # name is its own label while a cluster's aggregate lists it (at most 256, rebuilt at each
        # re-read, names listed in the last 5 minutes kept, at most 64 per cluster) or once a cluster
        # answered a request sent under it with a 2xx (at most 16 learnt, kept while used; with a
        # rewrite header, the header's name in Endpoint mode and none in Parent mode, never the
        # body's), else ``other``: at most 256 + 16 names at any moment, plus ``other`` and the empty
        # label. A name unseen for ``GRACE_S`` loses its series (``ModelLabels.sweep``).
        self.models = ModelLabels()  # (its ``reported``: the clusters' aggregates, set by GlobalGateway)
        self.requests = Counter(
            "kvgate_multicluster_requests_total", "Requests started, by cluster, routing mode and model",
            ["cluster", "mode", "model_name"], registry=r,
        )  # fmt: skip
        self.failed = Counter(
            "kvgate_multicluster_failed_total", "Requests no cluster could start", registry=r
        )
        # Each refused or failed request once, as ``kvgate serve`` and ``kvgate epp`` count it (the
        # collector the three doors share): the HTTP status its client gets, ``stream_cut`` or
        # ``client_gone``. The target model is the client's (this gateway rewrites none; a cluster's own
        # gateway or EPP may).
        self.errors = RequestErrors()
        r.register(self.errors)
        # As ``kvgate serve`` (same names, labels, buckets): ``inference_objective_request_total``, the
        # duration and token histograms, once per request a cluster answered (an error reply, a cut one
        # and one whose client left included), when its response ends. Tokens: a 2xx's usage, as
        # ``kvgate serve`` reads it (``kvgate.openai.usage``: a JSON body held up to ``_USAGE_BODY_MAX``
        # and decoded for its usage only; an event stream's bounded tail).
        self.stats = RequestStats()
        r.register(self.stats)
        # A name no longer seen loses its series in the three families that carry it
        # (``ModelLabels.sweep``; at each scrape too).
        self.models.forget += [self.errors.forget, self.stats.forget, self._forget_requests]
        self.failovers = Counter(
            "kvgate_multicluster_attempts_failed_total", "Failed attempts, by cluster and mode",
            ["cluster", "mode"], registry=r,
        )  # fmt: skip
        self.cut = Counter(
            "kvgate_multicluster_responses_cut_total", "Started responses the cluster stopped mid-way",
            ["cluster"], registry=r,
        )  # fmt: skip
        # A stream the cluster cut after its ``data: [DONE]`` went out: complete, ended as usual, not in
        # ``cut`` (review s17-doors I1; the drain's own abort is not counted).
        self.cut_after_done = Counter(
            "kvgate_multicluster_streams_cut_after_done_total",
            "Event streams the cluster's connection cut after data: [DONE] (ended complete)",
            ["cluster"], registry=r,
        )  # fmt: skip
        self.epp_lost = Counter(
            "kvgate_multicluster_epp_failed_midstream_total",
            "Endpoint-mode responses whose remote EPP failed mid-way (the response went on from the pod)",
            ["cluster"], registry=r,
        )  # fmt: skip
        self.stalled = Counter(
            "kvgate_multicluster_epp_stalled_total",
            "Endpoint-mode EPPs that stopped answering within epp_timeout_s, by phase (pick: the request "
            "went on elsewhere; response_headers / response_body: the response went on from the pod)",
            ["cluster", "phase"], registry=r,
        )  # fmt: skip
        self.epp_skipped = Counter(
            "kvgate_multicluster_epp_skipped_total",
            "Requests sent by Parent mode without asking the cluster's EPP, which backs off after a stall "
            "(epp_stalled_total)",
            ["cluster"], registry=r,
        )  # fmt: skip
        self.put_last = Counter(
            "kvgate_multicluster_endpoints_put_last_total",
            "Endpoint-mode addresses a request's walk of its EPP's list tried last, as the hub failed to "
            "connect to them within the last 30 s",
            ["cluster"], registry=r,
        )  # fmt: skip
        self.refused = Counter(
            "kvgate_multicluster_aggregates_refused_total",
            "Aggregate answers refused as no pool's (malformed, over the size cap, impossible numbers)",
            ["cluster"], registry=r,
        )  # fmt: skip
        self.usable = Gauge(
            "kvgate_multicluster_cluster_fresh", "1 while the cluster's aggregate is within the TTL",
            ["cluster"], registry=r,
        )  # fmt: skip
        # The clusters file's reloads (``ClustersFile.on_result``), as ``kvgate serve --config``'s
        # ``kvgate_gateway_config_*`` (the clusters file is this door's whole config; review s29-rev-a29).
        self.reload_metrics = ReloadMetrics(r, "kvgate_multicluster", "clusters file", wall)
        self.reload_result = self.reload_metrics.result
        self.front = FrontGauges(r, "kvgate_multicluster")
        r.register(LogLinesDropped("kvgate_multicluster"))  # (log lines lost: ``kvgate.stderrlog``)

    def _forget_requests(self, names: Set[str]) -> None:
        for name in names:
            self.requests.remove_by_labels({"model_name": name})

    def start(self, model: str, fairness: str) -> tuple[str, str, str, str]:
        """A parsed request in flight (the running families); ``stop`` with what this returns. Its size
        is observed at its end (``request_done`` or ``sized``), under the label it has then (a name a
        cluster answered with a 2xx may earn its label meanwhile), as ``kvgate epp`` observes it. This door
        reads no objectives (its clusters decide): ``priority`` is ``0``, the reference's label for a
        request without one (``strconv.Itoa`` of its unset 0), as the hub EPP's (qa34b note)."""
        label = self.models.label(model)
        return self.stats.start(label, label, -1, fairness, 0)

    def sized(self, model: str, request_bytes: int, flow: tuple[str, str]) -> None:
        """The size of a request no cluster answered (refused, or its client gone before an answer)."""
        label = self.models.label(model)
        self.stats.sized(label, label, request_bytes, flow)

    def stop(self, key: tuple[str, str, str, str]) -> None:
        self.stats.stop(key)

    def request_done(self, end: RequestEnd) -> None:
        """One request's end (``end.model`` the client's: this door rewrites none, so it is the target's
        label too)."""
        end.model = end.target = self.models.label(end.model)
        self.stats.observe(end)

    def error(self, model: str, code: str, flow: tuple[str, str] = NO_FLOW) -> None:
        label = self.models.label(model)  # (bounded: the model labels above; codes: statuses, named ends)
        self.errors.inc(label, label, code, flow)


class _UsageSeen:
    """A relayed JSON 2xx's usage, read as ``kvgate serve`` reads it: the body's chunks held (up to
    ``_USAGE_BODY_MAX``, taken from ``_USAGE_HELD``) and decoded for ``usage`` only once complete. An
    event stream's usage is the router's (``Routed.usage``: one reader of the stream's tail, which the
    cluster's hit or miss classification reads too). ``usage()`` gives the bytes back (called once,
    whatever the end)."""

    __slots__ = ("_budget", "_chunks", "_clock", "_held", "_routed", "complete", "first", "gaps", "sent")

    def __init__(self, budget: ByteBudget = _USAGE_HELD) -> None:
        self._budget = budget
        self._routed: Routed | None = None
        self._chunks: list[bytes] | None = None
        self._held = 0
        self.complete = False
        # Body bytes written to the client (-1: it left, what reached it is not known) and when an event
        # stream's first one went out (the clock's; -1: not an event stream; ``NO_FIRST_BYTE``: one
        # whose first byte did not go out, no TTFT).
        self.sent = 0
        self.first = -1.0
        # An event stream's gaps between the cluster's body chunks (llm-d's inter-token latency; None:
        # not an event stream), timed on ``_clock`` as they are fed.
        self.gaps: ChunkGaps | None = None
        self._clock: Callable[[], float] | None = None

    def stream(self, clock: Callable[[], float]) -> None:
        """An event stream: its first byte not out yet (``NO_FIRST_BYTE``), its chunk gaps timed."""
        self.first = NO_FIRST_BYTE
        self.gaps, self._clock = ChunkGaps(), clock

    def start(self, routed: Routed | None) -> None:
        """A 2xx: an event stream's usage comes from ``routed``; a JSON body's is held here."""
        if routed is not None and routed.tail is not None:
            self._routed = routed
        else:
            self._chunks = []

    def feed(self, chunk: bytes) -> None:
        if self.gaps is not None and self._clock is not None:
            self.gaps.tick(self._clock())
        if self._chunks is not None:
            if self._held + len(chunk) > _USAGE_BODY_MAX or not self._budget.take(len(chunk)):
                self._drop()  # too large to hold: no usage read
            else:
                self._held += len(chunk)
                self._chunks.append(chunk)

    def _drop(self) -> None:
        self._chunks = None
        self._budget.give(self._held)
        self._held = 0

    def usage(self) -> Usage | None:
        chunks = self._chunks
        self._drop()
        if not self.complete:  # cut, or its client left: no usage (as ``kvgate serve``'s relay)
            return None
        if self._routed is not None:
            return self._routed.usage()
        if chunks:
            return usage_from_body(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        return None


def _event_stream(headers: dict[str, str]) -> bool:
    """Whether a response is an event stream; ``headers`` keep the cluster's casing (a plain dict), so
    the header's name and the media type are compared case-insensitively."""
    for k, v in headers.items():
        if k.lower() == "content-type":
            return v[:17].lower() == "text/event-stream"
    return False


def _openai_error(body: bytes) -> bool:
    """Whether a remote EPP's refusal body is an OpenAI-style error (passed on as it is), not text (or, on
    ``/v1/messages``, Anthropic's, which has an ``error`` object too)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), dict)


def _no_route(method: str, path: str) -> Response:
    return json_error(404, f"no route for {method} {path}")


def _route_check(
    front: FrontServer, reads: Set[str], read_prefixes: tuple[str, ...] = ()
) -> Callable[[str, str], Response | None]:
    """The front's ``route_check``: a path no route takes gets its 404 from the head, without a ``100
    Continue`` (``kvgate serve``'s since qa32a Q5; late-a32), and so does a method other than GET or HEAD
    on a read-only path (``reads``, or under ``read_prefixes``: ``get_only``'s 405; small33). The other
    routes' methods stay their own."""

    def check(method: str, path: str) -> Response | None:
        if front.handler_for(path) is front.fallback:
            return _no_route(method, path)
        if method not in READ_METHODS and (path in reads or path.startswith(read_prefixes)):
            return read_only(method, path)
        return None

    return check


def _refuse(
    path: str,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A request's refusal, in its API's shape (``/v1/messages``: Anthropic's, as ``kvgate serve``'s)."""
    body = api_error_body(path, status, message, param, code)
    return Response(status=status, body=body, content_type="application/json", headers=headers)


def _cut_abort(routed: Routed) -> Callable[[], None] | None:
    """How the drain's deadline aborts this stream's upstream; None when it is not to be cut: nothing to
    abort, or its body arrived whole (an abort would make aiohttp drop what it buffered: a complete
    answer lost)."""
    if routed.received is not None and routed.received():
        return None
    return routed.abort


class _Late:
    """The request's bound (``limits.requestTimeoutSeconds``) over an answer being relayed: one timer, at
    ``deadline.due``, aborts the cluster's response (its body then raises, as at the drain's cut) unless
    it arrived whole; the relay then ends the answer: an event stream with an error event (504
    ``request_timeout``, naming the bound), any other body by closing the connection mid-body. The
    cluster is charged (backs off) only if it was not making progress all through the later half of the
    time it held the request: ``kvgate serve``'s rule, ``kvgate.openai.progress`` (data events with a
    payload, not comments or pings, or a piece of an event past 1 MiB; a body's pieces with more than
    blanks; no stretch of that half longer than an eighth of the hold without one, up to the cut; time
    spent waiting on a client that reads late is none)."""

    __slots__ = ("_gw", "_routed", "_timer", "deadline", "fired", "progress")

    def __init__(self, deadline: Deadline, routed: Routed, gw: GlobalGateway) -> None:
        self.deadline = deadline
        self._routed = routed
        self._gw = gw
        self.fired = False
        self.progress = Progress(routed.sent_at, deadline.due)
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_at(deadline.due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        abort = _cut_abort(self._routed)
        if abort is None:  # (arrived whole: relayed to its end as usual)
            return
        self.fired = True
        routed = self._routed
        log.warning("response from cluster %s cut at limits.requestTimeoutSeconds (%gs)", routed.cluster,
                    self.deadline.bound_s)  # fmt: skip
        # Charged only if it held the larger part of the request's time (as before a head: ``owned``) and
        # was not steady: a cluster sent the request late is not charged for the time spent before it
        # (review s20-mc M1; kvgate serve's ``timed_out`` alike).
        if self.deadline.owned(routed.sent_at) and not self.progress.steady():
            st = self._gw.router.states.get(routed.cluster)
            if st is not None:
                st.failed(self._gw.clock(), "its answer cut at limits.requestTimeoutSeconds")
        abort()

    def saw(self, chunk: bytes, edge: EventEdge | None) -> None:
        """A piece of the answer went out (an event stream's: whole events, or a piece of one past 1 MiB)."""
        if (progress_events(chunk) or edge.mid_event) if edge is not None else progress_piece(chunk):
            self.progress.seen(asyncio.get_running_loop().time())

    def event(self, path: str) -> bytes:
        what = f"the gateway cut the stream from cluster {self._routed.cluster} at its bound"
        return sse_error_event(self.deadline.message(what), code="request_timeout", status=504, path=path)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GlobalGateway:
    def __init__(
        self,
        cfg: ClustersConfig,
        policy: str = "kvgate",
        *,
        clusters_file: ClustersFile | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        fetch: bool = True,
        seed: int | None = None,  # the policy's randomness; None: from os.urandom
        limits: FrontLimits | None = None,
        drain_s: float | None = None,  # the stop's drain (None: the file's limits.drainTimeoutSeconds, live)
        staleness: StalenessPolicy | None = None,  # the members' InferencePool watches' (default 120 s)
        waiting_share: int | None = None,  # --max-waiting-bytes-per-client (None: the file's, live)
    ) -> None:
        """``clock`` and ``sleep``: one time (both or neither, ``check_one_time``; default the loop's) for
        the router, the fetcher, the clusters file's reload checks and ``ClusterSource`` (the writers'
        leader election and the members' watches)."""
        check_one_time(clock, sleep)
        clock = clock or time.monotonic
        self.router = GlobalRouter(cfg, policy, clock=clock, seed=seed)
        self.metrics = _Metrics()
        # The names the clusters' aggregates list are labels of their own (kvgate.openai.labels).
        self.metrics.models.reported = models_listed(self.router.state_list, clock)
        self.metrics.models.clock = clock
        self.router.on_stall = lambda cluster, phase: self.metrics.stalled.labels(cluster, phase).inc()
        self.router.on_epp_skip = lambda cluster: self.metrics.epp_skipped.labels(cluster).inc()
        self.router.on_put_last = lambda cluster: self.metrics.put_last.labels(cluster).inc()
        self.clusters_file = clusters_file
        if clusters_file is not None:
            clusters_file.on_change = self.reload
            clusters_file.on_result = self.metrics.reload_result
        # The clusters file and the InferencePoolImport its kubernetes: section follows (imports replace
        # only the file's clusters); shared with the hub EPP.
        self.source = ClusterSource(cfg, self.router.apply, staleness=staleness, clock=clock,
                                    sleep=sleep or asyncio.sleep)  # fmt: skip
        self.clock, self.sleep = clock, sleep or asyncio.sleep
        self.fetcher: Fetcher | None = None
        if fetch:
            self.fetcher = Fetcher(self.router.state_list, interval_s=cfg.refresh_s, tls=cfg.tls,
                                   clock=clock, sleep=self.sleep)  # fmt: skip
            self.fetcher.on_refused = lambda cluster: self.metrics.refused.labels(cluster).inc()
        self.limits = limits or cfg.limits
        self._waiting_share = waiting_share
        self._fixed_limits = limits is not None  # given by the caller: a reload does not change them
        self._drain_s = drain_s
        self.draining = False  # the stop began: ``/readyz`` answers 503 ``draining`` (as ``kvgate serve``)
        self.front: FrontServer | None = None
        self._server: asyncio.AbstractServer | None = None
        self._admin: asyncio.AbstractServer | None = None  # (``start``'s ``admin_port``)
        self._admin_front: FrontServer | None = None
        self.admin_port: int | None = None
        self.inflight = 0
        # Ids made for requests that came without an acceptable ``x-request-id`` (``_request_id``).
        self._rid_prefix = os.urandom(4).hex()
        self._rid_seq = 0
        self._idle = asyncio.Event()  # set while no request is in flight (the drain waits on it)
        self._idle.set()
        # The event streams being relayed (by id), and those the drain's deadline cut (``_cut_streams``).
        self._streams: dict[int, Routed] = {}
        self._cut: set[int] = set()
        self._cutting = False  # the cut came: a stream that starts relaying after it is cut at once
        self._reload_task: asyncio.Task[None] | None = None
        self.port = 0
        # Responses API ids -> the cluster that answered them: a follow-up (``previous_response_id``) is
        # sent there first (vLLM keeps a stored response in the server that made it).
        self.responses: ResponseHomes[tuple[str, str | None]] = ResponseHomes(clock=clock)
        # And, for an id made through an Endpoint-mode EPP that rewrote the request (its model), the name the
        # client sent: a lookup's answer has it put back, as the create's had (``lookups``; in Parent mode
        # the cluster's own gateway puts it back).
        self.response_models: ResponseHomes[str] = ResponseHomes(clock=clock)
        # An id neither knows: asked of the clusters' gateways (``lookups.ClusterLocator``, prev26).
        self.locator = ClusterLocator(self)

    @property
    def drain_s(self) -> float:
        """How long the stop waits for the requests in flight: the constructor's, else the clusters file's
        ``limits.drainTimeoutSeconds`` (30 s default, as ``kvgate serve``'s), as last reloaded when the
        stop began. Read from the gateway's own copy of the file (``ClusterSource.file_cfg``, set by
        ``reload``), not from the router's config: ``stop`` reads it before its ``stop_to_the_end`` guard
        (the guard's limit adds it), where nothing may fail (before epp28: a router without a config, a
        stand-in, raised there and nothing was stopped)."""
        return self.source.file_cfg.drain_timeout_s if self._drain_s is None else self._drain_s

    def reload(self, cfg: ClustersConfig) -> None:
        """A clusters-file reload: the clusters, TTL / refresh / locality, the TLS options (and files) of
        EPP channels and aggregate fetches, the fronts' ``limits`` (client and admin ports) and the
        ``kubernetes:`` section (the import controller restarted with it, ``ClusterSource``), all live;
        nothing needs a restart."""
        before = self.router.cfg
        self.source.reload(cfg)
        # (read per request from the router's config: review s20-mc L2)
        if before.request_timeout_s != cfg.request_timeout_s:
            log.info("clusters file: limits applied: requestTimeoutSeconds %g -> %g",
                     before.request_timeout_s, cfg.request_timeout_s)  # fmt: skip
        if before.drain_timeout_s != cfg.drain_timeout_s and self._drain_s is None:  # (read at the stop)
            log.info("clusters file: limits applied: drainTimeoutSeconds %g -> %g",
                     before.drain_timeout_s, cfg.drain_timeout_s)  # fmt: skip
        if self.fetcher is not None:
            self.fetcher.apply(cfg.tls, cfg.refresh_s)
        if self.front is not None and not self._fixed_limits:
            self.limits = cfg.limits
            changed = self.front.apply_limits(cfg.limits)
            if self._admin_front is not None:  # (as kvgate serve's admin front: s17-qafix-bc L2)
                self._admin_front.apply_limits(cfg.limits)
            if changed:
                log.info("clusters file: limits applied: %s",
                         ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(changed.items())))  # fmt: skip

    # --- routes -------------------------------------------------------------------------------
    def _request_id(self, request: Request) -> str:
        """The request's ``x-request-id``: the client's when acceptable (``kvgate.requestid``), else one made
        here and put in its headers, so the cluster is sent it and both logs name the request alike (qa25
        F3: the hub's own refusals had none, not even the client's)."""
        rid = request.headers.get(REQUEST_ID)
        if rid and acceptable_rid(rid):
            return rid
        if rid:  # over the bound or unprintable: replaced, not forwarded (qa24 F6, as kvgate serve)
            log.info("x-request-id %s replaced by a generated one", rid_shown(rid))
        self._rid_seq += 1
        rid = request.headers[REQUEST_ID] = f"{self._rid_prefix}-{self._rid_seq:x}"
        return rid

    async def _proxy(self, request: Request) -> Response | StreamResponse:
        rid = self._request_id(request)
        if request.method != "POST":
            return json_error(405, f"{request.method} is not allowed on {request.path}; use POST",
                              headers={"Allow": "POST", REQUEST_ID: rid})  # fmt: skip
        self.inflight += 1
        self._idle.clear()
        try:
            resp = await self._route(request)
        finally:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()
        if isinstance(resp, Response):  # (the hub's own answers; a cluster's is relayed: ``_relay``)
            resp.headers.setdefault(REQUEST_ID, rid)
        return resp

    async def _lookup(self, request: Request) -> Response | StreamResponse:
        """A Responses lookup (``lookups``), with the request's id as ``_proxy``'s."""
        rid = self._request_id(request)
        resp = await lookup(self, request)
        if isinstance(resp, Response):
            resp.headers.setdefault(REQUEST_ID, rid)
        return resp

    async def _route(self, request: Request) -> Response | StreamResponse:
        t0 = self.clock()  # (the body read, as ``kvgate serve``'s duration starts)
        # ``limits.requestTimeoutSeconds`` bounds the whole request from here, as ``kvgate serve``'s does
        # (read once: a reload applies to requests that start after it).
        deadline = Deadline.after(asyncio.get_running_loop().time(), self.router.cfg.request_timeout_s)
        raw = request.body
        path = request.path
        try:
            kind = kind_for_path(path)
            if offload.worth_the_thread(raw):  # (on the parse thread, clients in turn, as ``kvgate serve``)
                parsed = await self._parse_off_loop(kind, raw, request.peer)
            else:
                parsed = parse_body(kind, raw)
        except BodyError as e:
            self.metrics.error("", str(e.status))  # (no model yet: empty labels, as kvgate serve)
            # (a 429 is ``offload.ShareFull``: retry once the waiting bodies are parsed)
            busy = {"Retry-After": RETRY_AFTER_DEFAULT} if e.status == 429 else None
            return _refuse(path, e.status, e.message, param=e.param, headers=busy)
        # In flight: the model's name keeps its label (and series) to the request's end, a stream longer
        # than GRACE_S included (``ModelLabels.hold``; review s15-labels L2).
        self.metrics.models.hold(parsed.model)
        # (the flow as flow control reads it, ``flow_key``: llm-d's fairness header, else GIE's, else the
        # default; rev-c36 F3)
        fairness = request.headers.get(LLMD_FAIRNESS_ID) or DEFAULT_FAIRNESS_ID
        if fairness == DEFAULT_FAIRNESS_ID:
            fairness = request.headers.get(FAIRNESS_ID) or fairness
        running = self.metrics.start(parsed.model, fairness)
        try:
            return await self._route_parsed(request, parsed, t0, (running[2], running[3]), deadline)
        finally:
            self.metrics.stop(running)
            self.metrics.models.drop(parsed.model)

    async def _parse_off_loop(self, kind: str, raw: bytes, peer: str) -> ParsedBody:
        """``parse_body`` on the parse thread, each client (peer host) within its share of the body budget
        under pressure (``offload.off_loop``, ``kvgate serve``'s bound: ``ShareFull``, a 429)."""
        per_client = self._waiting_share
        if per_client is None:
            per_client = self.router.cfg.max_waiting_bytes_per_client
        limit = self.limits.max_buffered_bytes
        share = offload.waiting_share(per_client, limit)
        return await offload.off_loop(functools.partial(parse_body, kind), raw, peer, share, limit)

    async def _route_parsed(
        self,
        request: Request,
        parsed: ParsedBody,
        t0: float,
        flow: tuple[str, str],
        deadline: Deadline | None = None,
    ) -> Response | StreamResponse:
        path = request.path
        raw = request.body
        # The stream ends with a usage event: the client asked for it (read as vLLM reads it, lax:
        # ``"true"`` too; rev-e32 F3), or its API always sends one (the Responses API's
        # ``response.completed``, Anthropic's ``message_delta``).
        asked = parsed.client_wants_usage
        creq = ClusterRequest(
            parsed.model,
            prompt_key(parsed.prompt_text, parsed.token_ids),
            stream=bool(parsed.stream),
            usage=bool(parsed.stream) and (asked or path in STREAM_USAGE_PATHS),
        )
        prev = previous_response_id(path, parsed.body)
        home = None if prev is None else known_home(self, prev)
        try:
            if prev is not None and home is None:
                # Not known here (a restart, an id past the map's bounds, a home cluster no longer in the
                # clusters file): asked of the clusters (prev26; s27-rev-loc27 F1).
                got = await self.locator.home_of(prev, request.headers, deadline)
                if isinstance(got, NoRoute):
                    raise got
                home = got
            routed = await self.router.route(
                path, request.headers, raw, creq, home=home, deadline=deadline, pinned=prev is not None
            )
        except asyncio.CancelledError:  # the client went away while a cluster was being tried
            self.metrics.error(parsed.model, "client_gone", flow)
            self.metrics.sized(parsed.model, len(raw), flow)
            raise
        except NoRoute as e:
            self.metrics.failed.inc()
            self.metrics.error(parsed.model, str(e.status), flow)
            self.metrics.sized(parsed.model, len(raw), flow)
            self._count_failed(e.attempts)
            if e.status == 429:
                return _refuse(path, 429, e.message, headers={"Retry-After": str(e.retry_after or 1)})
            if e.error is not None and _openai_error(e.error):
                # The refusing EPP's own error (its message, ``code``, ``param``), as through ``kvgate epp``.
                return Response(status=e.status, body=e.error, content_type="application/json")
            # (a follow-up's home cluster's 503 keeps its Retry-After: ``router._home_said``)
            wait = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
            return _refuse(path, e.status, e.message, code=e.code, headers=wait)
        seen = _UsageSeen()
        # The name the model server was sent: the only one its 2xx says anything of
        # (kvgate.openai.labels). A client's rewrite header names it only where this gateway gave it to
        # an EPP that obeys it (Endpoint mode: the pod got the EPP's body). A cluster's own gateway may
        # ignore the header (``kvgate serve`` does), so in Parent mode (a fallback included) the pod may
        # have got either name: learn none rather than one a client chose.
        rewrite = request.headers.get(LLMD_MODEL_REWRITE) or request.headers.get(MODEL_REWRITE)
        sent = parsed.model if not rewrite else rewrite if routed.mode == ENDPOINT else ""
        try:
            return await self._relay(request, routed, parsed.model, sent, seen, flow, deadline)
        finally:
            if 200 <= routed.status < 300:
                # (seen again at its end: a learnt name only a stream longer than GRACE_S used keeps its
                # label for the end's counts)
                self.metrics.models.served(sent)
            first = seen.first - t0 if seen.first >= 0 else seen.first
            m = parsed.model
            end = RequestEnd(
                m, m, self.clock() - t0, seen.usage(), seen.sent, len(raw), flow, first, seen.gaps
            )
            self.metrics.request_done(end)
            # Cut short (the client left, a write failed, cancelled before the first chunk) or done:
            # settle the upstream, the EPP and the cluster's accounting now, the body read or not.
            await routed.close()
            if routed.epp is not None and routed.epp.fell_back:
                self.metrics.epp_lost.labels(routed.cluster).inc()

    async def _relay(
        self,
        request: Request,
        routed: Routed,
        model: str,
        sent: str,
        seen: _UsageSeen,
        flow: tuple[str, str] = NO_FLOW,
        deadline: Deadline | None = None,
    ) -> StreamResponse:
        """``deadline``: the request's bound, which the answer is cut at too (``_Late``)."""
        self._count_failed(routed.attempts[:-1])
        metrics = self.metrics
        if 200 <= routed.status < 300:
            metrics.models.served(sent)
        metrics.requests.labels(routed.cluster, routed.mode, metrics.models.label(model)).inc()
        headers = dict(routed.headers)
        rid = request.headers.get(REQUEST_ID)  # (``_request_id``'s)
        if rid and not any(k.lower() == REQUEST_ID for k in headers):  # (a cluster that does not echo it)
            headers[REQUEST_ID] = rid
        headers["x-kvgate-cluster"] = routed.cluster
        headers["x-kvgate-route-mode"] = routed.mode
        sse = _event_stream(headers)
        resp = StreamResponse(routed.status, headers, None, routed.set_cookies)
        body = routed.body
        # Counted once: a cluster's error reply under its status (as the gateway door), else a cut
        # under stream_cut, else a client that left before the end under client_gone.
        counted = routed.status >= 400
        if counted:
            self.metrics.error(model, str(routed.status), flow)
        elif 200 <= routed.status < 300:  # (as ``kvgate serve``: usage of a 2xx only)
            seen.start(routed)
        # A Responses answer's id, remembered with its cluster once the answer ended complete.
        ids = ResponseIdReader(sse) if request.path == RESPONSES_PATH and 200 <= routed.status < 300 else None
        key = id(routed)
        # An event stream goes out whole events only (a partial one waits for its end), so the drain's
        # error event never lands inside one; ``edge.done``: its ``[DONE]`` (a typed stream's last event:
        # Responses, Anthropic Messages) went out, as ``kvgate serve``'s relay reads it (small36).
        edge = EventEdge(typed=request.path in STREAM_USAGE_PATHS) if sse else None
        writing = False  # a write to the client pending: the ``[DONE]`` it holds has not reached it
        if sse:
            seen.stream(self.clock)  # (no first byte until one goes out; its chunk gaps timed)
            self._streams[key] = routed
            if self._cutting and (abort := _cut_abort(routed)) is not None:  # (answered after the cut: L6)
                self._cut.add(key)
                abort()
        late = None if deadline is None else _Late(deadline, routed, self)
        if late is not None:
            resp.waits = late.progress  # (waiting on the client is no gap: review s20-gw M2)
        try:
            await resp.prepare(request)
            while True:
                try:
                    chunk = await body.__anext__()
                except (StopAsyncIteration, *_CUT) as e:
                    if late is not None:
                        late.stop()  # (the answer's end: the timer's work is done, whatever it was)
                    if edge is not None and edge.done:
                        # ``[DONE]`` went out: a complete answer, whatever cut what came after it (the
                        # drain's abort of a body read to its end raises too): ended as usual. The
                        # cluster's own cut is said (DEBUG) and counted (review s17-doors I1).
                        if key not in self._cut and not isinstance(e, StopAsyncIteration):
                            self.metrics.cut_after_done.labels(routed.cluster).inc()
                            log.debug(
                                "response from cluster %s cut after its [DONE]: %s: %s",
                                routed.cluster, type(e).__name__, e,
                            )  # fmt: skip
                        seen.complete = True
                        break
                    cut_late = late is not None and late.fired  # (whatever the read said, as the drain's)
                    if key not in self._cut and not cut_late and isinstance(e, StopAsyncIteration):
                        seen.complete = True  # the normal end only: a cut stream gives no usage
                        if edge is not None and (rest := edge.rest()):
                            seen.sent += len(rest)
                            await resp.write(rest)
                        break
                    if not counted:
                        counted = True
                        self.metrics.error(model, "stream_cut", flow)
                    mid = edge is not None and edge.mid_event  # (an event past 1 MiB half sent)
                    if key in self._cut:  # (the drain's deadline cut it: not the cluster's doing)
                        if mid:  # no event glued onto the half event: closed mid-body
                            resp.abort()
                            return resp
                        event = drain_cut_event(self.drain_s, request.path)
                        seen.sent += len(event)
                        await resp.write(event)
                        break
                    if late is not None and cut_late:  # (the request's bound cut it: ``_Late``)
                        if not sse or mid:
                            resp.abort()  # the client must see an incomplete body, not a short one
                            return resp
                        event = late.event(request.path)
                        seen.sent += len(event)
                        await resp.write(event)
                        break
                    self.metrics.cut.labels(routed.cluster).inc()
                    log.warning("response from cluster %s cut: %s: %s", routed.cluster, type(e).__name__, e)
                    if not sse or mid:
                        resp.abort()  # the client must see an incomplete body, not a short one
                        return resp
                    event = sse_error_event(f"cluster {routed.cluster} cut the stream", path=request.path)
                    seen.sent += len(event)
                    await resp.write(event)
                    break
                seen.feed(chunk)
                if ids is not None and not ids.done:  # (fed until its id is found: M2)
                    ids.feed(chunk)
                if edge is not None:
                    chunk = edge.feed(chunk)  # (an event past 1 MiB goes out as it comes)
                    if not chunk:
                        continue
                    if seen.first < 0:  # (an event stream's first byte out: its TTFT)
                        seen.first = self.clock()
                if late is not None:
                    late.saw(chunk, edge)
                seen.sent += len(chunk)  # (the response size: a count, no copy)
                writing = True
                await resp.write(chunk)  # a client gone raises here (or cancels us): not a cut
                writing = False
            await resp.write_eof()
            if ids is not None and seen.complete:
                self._remember(ids, routed, model)
        except (ConnectionResetError, asyncio.CancelledError):
            if not counted and edge is not None and edge.done and not writing:
                # Its client left once ``[DONE]`` (a typed stream's last event) went out, its write
                # returned: the whole answer, a normal end as ``kvgate serve``'s (qa35b F1, rev-b35 F1/F2;
                # small36: here it was ``client_gone``), its usage read from what came.
                seen.complete = True
                if ids is not None:
                    self._remember(ids, routed, model)
                raise
            seen.sent = -1  # (what reached the client is not known: no size, as ``kvgate serve``)
            if not counted:
                self.metrics.error(model, "client_gone", flow)
            raise
        finally:
            if late is not None:
                late.stop()
            if sse:
                self._streams.pop(key, None)
                self._cut.discard(key)
        return resp

    def _remember(self, ids: ResponseIdReader, routed: Routed, model: str) -> None:
        """A complete Responses answer's id, with the cluster (and, Endpoint mode, the pod) it came from."""
        if (rid := ids.response_id()) is None:
            return
        # (Endpoint mode: the pod it answered from, the last attempt's target)
        pod = routed.attempts[-1].target if routed.mode == ENDPOINT and routed.attempts else None
        self.responses.remember(rid, (routed.cluster, pod))
        if routed.epp is not None and routed.epp.rewritten:
            self.response_models.remember(rid, model)

    def _cut_streams(self) -> int:
        """The drain's deadline: abort the upstream response of every event stream being relayed; each
        relay then ends its client's stream with an error event (503, ``service_unavailable``, naming the
        deadline) and the body's clean end, not a connection closed mid-body. Returns how many. A stream
        that starts relaying after this (its cluster answered later) is cut at its start the same way.
        One whose body already arrived whole is not cut (as ``kvgate serve``): its relay passes on what
        arrived, a complete answer, and ends it as usual (review s17-doors F3)."""
        self._cutting = True
        for key, routed in self._streams.items():
            if (abort := _cut_abort(routed)) is not None:
                self._cut.add(key)
                abort()
        return len(self._cut)

    def _count_failed(self, attempts: list[Attempt]) -> None:
        for a in attempts:
            self.metrics.failovers.labels(a.cluster, a.mode).inc()

    async def _metrics(self, _request: Request) -> Response:
        now = self.clock()
        self.metrics.models.sweep()  # (an idle gateway's stale model series go too)
        for st in self.router.state_list():
            self.metrics.usable.labels(st.name).set(1.0 if st.fresh(now, self.router.cfg.ttl_s) else 0.0)
        return Response(body=generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    def _model_list(self) -> list[dict[str, Any]]:
        """What ``GET /v1/models`` lists: the names the clusters' latest aggregates list
        (``PoolAggregate.models``: each cluster's front door's model and adapter names and the names its
        rewrite rules serve, then what its servers report), the union in the clusters' order, each with
        the clusters that list it. A cluster with no aggregate yet lists nothing; a stale one its last list
        (the router may still send there)."""
        where: dict[str, list[str]] = {}
        for st in self.router.state_list():
            if st.aggregate is not None:
                for name in st.aggregate.models:
                    where.setdefault(name, []).append(st.name)
        return [{"id": name, "object": "model", "created": 0, "owned_by": "kvgate", "root": name,
                 "parent": None, "clusters": clusters} for name, clusters in where.items()]  # fmt: skip

    async def _models(self, _request: Request) -> Response:
        data = self._model_list()
        return Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")

    async def _model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``: that entry of ``/v1/models``, else OpenAI's 404 ``model_not_found``."""
        wanted = unquote(request.path[len(MODELS_PREFIX) :])
        for entry in self._model_list():
            if entry["id"] == wanted:
                return Response(body=orjson.dumps(entry), content_type="application/json")
        return json_error(404, f"The model '{wanted}' does not exist", param="model", code="model_not_found")

    async def _clusters(self, _request: Request) -> Response:
        return Response(body=orjson.dumps(self.router.summary()), content_type="application/json")

    async def _healthz(self, _request: Request) -> Response:
        dead = self.source.dead()
        if dead is not None:  # the import controller's loop never comes back by itself: restart
            return json_error(503, f"import controller: {dead}")
        return Response(text="ok", content_type="text/plain")

    async def _readyz(self, _request: Request) -> Response:
        if self.draining:  # (the data port refuses new connections: a probe must stop sending them here)
            return Response(status=503, text="draining", content_type="text/plain")
        # The import controller's problem (a member not seen, a hub write refused) is said, but readiness
        # is the router's: with a cluster ready the gateway serves, whatever the hub answers.
        problem = self.source.problem()
        why = "" if problem is None else f"; import controller: {problem}"
        if self.router.ready():
            return Response(text="ready" + why, content_type="text/plain")
        return json_error(503, "no cluster ready" + why)

    async def _not_found(self, request: Request) -> Response:
        return _no_route(request.method, request.path)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        admin_port: int | None = None,
        admin_ssl: ssl.SSLContext | None = None,
    ) -> int:
        """``admin_port`` (0: ephemeral, ``self.admin_port``): the admin routes (``/metrics``,
        ``/healthz``, ``/readyz``, ``/v1/clusters``) there, HTTPS with ``admin_ssl``, and not on the data
        port (as ``kvgate serve --admin-port``); None: on the data port."""
        await self.router.start()
        if self.fetcher is not None:
            await self.fetcher.start()
        # The paths ``kvgate serve`` routes (completions, chat, embeddings and vLLM's other JSON APIs:
        # ``kvgate.openai.request.ROUTED_PATHS``), each sent to the same path in the chosen cluster.
        routes: dict[str, Handler] = dict.fromkeys(ROUTED_PATHS, self._proxy)
        routes["/v1/models"] = get_only(self._models)
        admin: dict[str, Handler] = {}
        for p, h in (("/metrics", self._metrics), ("/v1/clusters", self._clusters),
                     ("/healthz", self._healthz), ("/readyz", self._readyz)):  # fmt: skip
            admin[p] = get_only(h)
        if admin_port is None:
            routes.update(admin)
        # GET /v1/responses/{id}, POST /v1/responses/{id}/cancel: where the response was made (``lookups``)
        prefix: dict[str, Handler] = {LOOKUP_PREFIX: self._lookup}
        prefix[MODELS_PREFIX] = get_only(self._model)  # GET /v1/models/{id}
        self.front = FrontServer.with_limits(routes, self._not_found, self.limits, prefix_routes=prefix)
        front = self.front
        # A request the front refuses (413 over maxBodyBytes, malformed HTTP, 408) is counted once, as the
        # gateway door counts it.
        error = self.metrics.error
        front.on_reject = lambda status: error("", str(status))
        front.route_check = _route_check(front, routes.keys() - ROUTED_PATHS, (MODELS_PREFIX,))
        loop = asyncio.get_running_loop()
        fronts = [front]
        if admin_port is not None:
            admin_front = self._admin_front = FrontServer.with_limits(admin, self._not_found, self.limits)
            admin_front.route_check = _route_check(admin_front, admin.keys())
            fronts.append(admin_front)
            self._admin = await loop.create_server(
                admin_front.protocol, host, admin_port, ssl=admin_ssl, reuse_address=True
            )
            self.admin_port = self._admin.sockets[0].getsockname()[1]
        self.metrics.front.track(lambda: fronts)
        self._server = await loop.create_server(front.protocol, host, port, backlog=4096, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        await self.source.start()
        if self.clusters_file is not None:  # (after the start: a reload's kubernetes change follows it)
            self._reload_task = asyncio.create_task(self._reload_loop())
        return self.port

    def reload_now(self) -> None:
        """SIGHUP: the clusters file looked at now (re-read if it changed), not at the next poll."""
        if self.clusters_file is not None and not self.draining:
            self.clusters_file.reload_now(self.clock())
            self.source.poll()

    async def _reload_loop(self) -> None:
        assert self.clusters_file is not None
        while True:
            await self.sleep(self.clusters_file.check_every_s)
            self.clusters_file.maybe_reload(self.clock())
            self.source.poll()

    async def stop(self) -> None:
        """(To its end also when cancelled meanwhile, the cancellation raised after: ``stop_to_the_end``.)"""
        self._drain_s = self.drain_s  # (fixed now: a reload during the stop changes it no more)
        await stop_to_the_end(self._stop(), "the global gateway's stop", log, self._drain_s + STOP_LIMIT_S)

    async def _stop(self) -> None:
        self.draining = True
        if self._reload_task is not None:
            await cancel_and_wait(self._reload_task, "the clusters-file reload loop", log)
        await self.source.stop()  # (raises nothing but a cancellation: the rest below still stops)
        if self.fetcher is not None:
            await self.fetcher.stop()
        if self._server is not None and self.front is not None:
            # Graceful: no new connections, idle ones closed, in-flight requests get ``drain_s``.
            self._server.close()
            self.front.drain()
            with contextlib.suppress(TimeoutError):  # (not wait_for: see kvgate.k8s.tasks.wait_event)
                async with asyncio.timeout(self.drain_s):
                    # A request still arriving when the drain began (or unread in the kernel) is read
                    # and answered, then its connection closes (review s17-doors F2); so is one
                    # pipelined behind an answer that ends in the drain, which then starts (qa33b-F1).
                    while True:
                        await self.front.reads_done()
                        await self._idle.wait()
                        if not self.front.reading and not self.inflight:
                            break
            if self.inflight:
                # Every request in flight gets the second, not only the streams cut: one answered in it
                # is cut at once the same way (review s16-doors L6). Bounded: a client not reading is
                # cut with its connection below.
                self._cut_streams()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CUT_WRITE_S):
                        await self._idle.wait()
            self.front.close_all()
            # The cut handlers' cleanup (releasing upstream connections, cancelling EPP streams) runs
            # before the router closes the session and channels it uses.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._idle.wait()
        if self._admin is not None and self._admin_front is not None:  # (served through the drain)
            self._admin.close()
            self._admin_front.close_all()
        await self.router.close()


@dataclass(slots=True)
class ServeArgs:
    clusters: str
    policy: str = "kvgate"
    host: str = "127.0.0.1"
    port: int = 8080
    seed: int | None = None  # --cluster-policy-seed; None: drawn from os.urandom at start
    series_grace_s: float = GRACE_S  # --model-series-grace (``ModelLabels.grace_s``)
    stale_after_s: float | None = None  # --kube-stale-after: the members' watches' (None: 120 s)
    admin_port: int | None = None  # --admin-port: the admin routes there (None: on the data port)
    admin_ssl: ssl.SSLContext | None = None  # --admin-tls (--client-ca: client certificates required)
    waiting_share: int | None = None  # --max-waiting-bytes-per-client (None: the clusters file's)


def serve_check(cfg: ClustersConfig) -> None:
    """What ``kvgate serve`` refuses in a clusters file that parses: ``kubernetes.parent_mode_only: true``
    says the gateways following the import route in Parent mode only (hub EPPs), and the import's
    ``ResolvedRefs`` is written so; this gateway also routes in Endpoint mode, so for it that status
    would be wrong (an exporter with only an EPP address called unresolved though it is routed to).
    ``destination_fallbacks`` is the hub EPP's destination header: this gateway sends requests itself
    (and walks its clusters on its own), so nothing here would read it (refused, not ignored)."""
    kube = cfg.kubernetes
    if kube is not None and kube.parent_mode_only:
        raise ClustersError(
            "kubernetes.parent_mode_only",
            "true is for hub EPPs (kvgate epp --clusters) and a kvgate hub-controller writing for them; "
            "kvgate serve routes in Endpoint mode too: remove it, or give the hub EPPs a clusters file "
            "(and parent) of their own",
        )
    if cfg.destination_fallbacks is not None:
        raise ClustersError(
            FALLBACKS_KEY,
            "is for hub EPPs (kvgate epp --clusters: the gateways its destination header names); kvgate "
            "serve sends each request itself and moves on to the next cluster on its own: remove it",
        )


def _count(n: int) -> str:
    return f"{n} cluster" if n == 1 else f"{n} clusters"


def run(args: ServeArgs) -> int:
    """Blocking entry for ``kvgate serve --clusters``; 2 on a bad clusters file."""
    try:
        cfile = ClustersFile(args.clusters, check=serve_check)
    except ClustersError as e:
        print(f"kvgate serve: clusters file error: {e}", file=sys.stderr, flush=True)
        return 2

    async def main() -> None:
        seed = fresh_seed() if args.seed is None else args.seed
        gw = GlobalGateway(cfile.config, args.policy, clusters_file=cfile, seed=seed,
                           staleness=hub_policy(args.stale_after_s, warn=False),
                           waiting_share=args.waiting_share)  # fmt: skip
        gw.metrics.models.grace_s = args.series_grace_s
        try:
            port = await gw.start(args.host, args.port, admin_port=args.admin_port, admin_ssl=args.admin_ssl)
        except ClustersError:  # the kubernetes section cannot be loaded: say so, exit 2
            await gw.stop()
            raise
        except OSError as e:  # a port taken: one line, exit 1, as kvgate serve (review s17-fixes-a L3)
            await gw.stop()
            admin_at = "" if args.admin_port is None else f" (admin port {args.admin_port})"
            print(f"kvgate serve: cannot listen on {args.host}:{args.port}{admin_at}: {e}",
                  file=sys.stderr, flush=True)  # fmt: skip
            raise SystemExit(1) from None
        # (before the start line: a SIGHUP sent once it is read is handled; ignored until now: gateway/cli.py)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gw.reload_now)
        admin = "" if gw.admin_port is None else (
            f", admin on {'https' if args.admin_ssl else 'http'}://{args.host}:{gw.admin_port}"
        )  # fmt: skip
        say(f"kvgate serve: global gateway on http://{args.host}:{port}{admin} "
            f"({_count(len(cfile.config.clusters))}, policy {args.policy}, seed {seed})")  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gw.stop()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
    except ClustersError as e:
        print(f"kvgate serve: clusters file error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0
