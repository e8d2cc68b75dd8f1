"""The EPP's own Prometheus metrics, on a private registry so several servers can live in one process.

The metrics port serves this registry together with the process-wide default one (where the picker's
and scraper's metrics live, per-endpoint pick counts included), as one text exposition. It is served by
the gateway's own front (``kvgate.httpfront``, as ``kvgate serve``'s admin port), so it has the same
slow-client limits at their defaults (``FrontLimits``): a request head complete within 10 s
(``headerTimeoutSeconds``, else 408 and closed), at most 10,000 connections (``maxConnections``,
clamped to the fd limit; over it 503), idle keep-alive closed after 75 s (qa25 F2: on aiohttp a head
trickled a line a second was held open for good, and connections had no cap, in the process whose gRPC
port serves Envoy).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kvgate import __version__
from kvgate.datalayer.aggregate import AGGREGATE_PATH
from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc.ports import bind_one
from kvgate.httpfront.metrics import LogLinesDropped
from kvgate.httpfront.server import (
    READ_METHODS,
    FrontLimits,
    FrontServer,
    Handler,
    Request,
    Response,
    get_only,
    json_error,
)
from kvgate.openai.labels import ModelLabels, ReportedNames, kept_per_source
from kvgate.openai.requeststats import NO_FLOW, BuildInfo, RequestEnd, RequestErrors, RequestStats
from kvgate.scheduling.types import PickResult, Usage

_PICK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BYTES_BUCKETS = tuple(float(1 << s) for s in range(8, 27, 2))


def models_reported(endpoints: Callable[[], Iterable[Endpoint]], clock: Callable[[], float]) -> ReportedNames:
    """The names the pods' scraped metrics report serving now (their ``model_name`` label, a running or
    waiting LoRA adapter), the pods walked at most once per ``REFRESH_S`` of ``clock``: ``ModelLabels``'
    ``reported``. Every pod's base model names come first, then the running adapters, then the waiting
    ones, so a cut at ``MAX_REPORTED_NAMES`` drops adapters before any pod's base model. A name a pod no
    longer reports is kept a while per pod (``kept_per_source``: at most ``MAX_SOURCE_NAMES`` per pod, a
    pod replaced keeps its kept names to their end), so a pod churning adapters cannot push another
    pod's idle adapter out of its label (doors16; before, the pods shared one history)."""

    def walk() -> Iterator[tuple[str, tuple[Iterable[str], ...]]]:
        for e in endpoints():
            m = e.metrics
            yield e.address, (m.models, m.running_loras, m.waiting_loras)

    return kept_per_source(walk, clock)


class EppMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, models: ModelLabels | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # ``model_name`` / ``target_model_name`` values, bounded (kvgate.openai.labels): the names the
        # config lists (``--model``, adapters, rewrites), and names a model server was sent and answered
        # with a 2xx (the rewrite's target, never the client's own name).
        self.models = models or ModelLabels()
        # As ``kvgate serve`` (the collector the three doors share): each request refused, answered with
        # a model server's 4xx/5xx, or left before its response completed (``client_gone``), once.
        self.errors = RequestErrors()
        r.register(self.errors)
        # As ``kvgate serve`` (same names, labels, buckets): ``inference_objective_request_total``, its
        # duration and token histograms, once per request whose response headers came back, when its
        # stream ends (``request_done``).
        self.requests = RequestStats()
        r.register(self.requests)
        r.register(BuildInfo(__version__))  # inference_extension_info, llm_d_epp_info
        r.register(LogLinesDropped("kvgate_epp"))  # (log lines lost: ``kvgate.stderrlog``)
        # A name no longer seen loses its series in both (``ModelLabels.sweep``; at each scrape too).
        self.models.forget += [self.errors.forget, self.requests.forget]
        self.streams = Gauge("kvgate_epp_streams_active", "ext_proc streams open now", registry=r)
        self.picks = Counter("kvgate_epp_picks_total", "Requests given an endpoint", registry=r)
        self.inflight = Gauge(
            "kvgate_epp_inflight_requests", "Requests given an endpoint whose response has not ended",
            registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "kvgate_epp_rejections_total", "ImmediateResponse errors by HTTP status", ["status"], registry=r
        )
        self.pick_seconds = Histogram(
            "kvgate_epp_pick_duration_seconds",
            "Time inside the picker per request (the pick and its bookkeeping; not a flow-control wait)",
            buckets=_PICK_BUCKETS,
            registry=r,
        )
        self.body_bytes = Histogram(
            "kvgate_epp_request_body_bytes", "Request body size", buckets=_BYTES_BUCKETS, registry=r
        )
        self.responses = Counter(
            "kvgate_epp_responses_total", "Responses seen, by outcome", ["ok", "streaming"], registry=r
        )
        self.prompt_tokens = Counter("kvgate_epp_prompt_tokens_total", "usage.prompt_tokens", registry=r)
        self.completion_tokens = Counter(
            "kvgate_epp_completion_tokens_total", "usage.completion_tokens", registry=r
        )
        self.cached_tokens = Counter(
            "kvgate_epp_cached_prompt_tokens_total", "usage.prompt_tokens_details.cached_tokens", registry=r
        )

    # Observer protocol used by kvgate.extproc.session
    def picked(self, result: PickResult, seconds: float, body_bytes: int) -> None:
        self.picks.inc()
        self.inflight.inc()
        self.pick_seconds.observe(seconds)
        self.body_bytes.observe(body_bytes)

    def rejected(
        self, status: int, model: str = "", target: str = "", flow: tuple[str, str] = NO_FLOW
    ) -> None:
        self.rejections.labels(str(status)).inc()
        self.error(model, target, str(status), flow)

    def error(self, model: str, target: str, code: str, flow: tuple[str, str] = NO_FLOW) -> None:
        labels = self.models.label  # (bounded: the labels above; codes are HTTP statuses and named ends)
        self.errors.inc(labels(model), labels(target), code, flow)

    def request_done(self, end: RequestEnd) -> None:
        labels = self.models.label
        end.model, end.target = labels(end.model), labels(end.target)
        self.requests.observe(end)

    def sized(self, model: str, target: str, request_bytes: int, flow: tuple[str, str] = NO_FLOW) -> None:
        labels = self.models.label
        self.requests.sized(labels(model), labels(target), request_bytes, flow)

    def flow(self, fairness: str, priority: int) -> tuple[str, str]:
        return self.requests.flow(fairness, priority)

    def served(self, target: str) -> None:
        self.models.served(target)

    def begin(
        self, model: str, target: str, request_bytes: int = -1, fairness: str = "", priority: int = 0
    ) -> tuple[str, str, str, str] | None:
        self.models.hold(model)
        if target != model:
            self.models.hold(target)
        if not model or request_bytes < 0:  # (a model's request only, as the reference)
            return None
        labels = self.models.label
        # (its size observed at its end, under the labels its request series get: ``request_done``;
        # running from ``dispatched``)
        return self.requests.start(labels(model), labels(target), -1, fairness, priority, run=False)

    def dispatched(self, running: tuple[str, str, str, str]) -> None:
        self.requests.run(running)

    def end(self, model: str, target: str, running: tuple[str, str, str, str] | None = None) -> None:
        if running is not None:
            self.requests.stop(running)
        self.models.drop(model)
        if target != model:
            self.models.drop(target)

    def finished(self, usage: Usage | None, ok: bool, streaming: bool) -> None:
        self.inflight.dec()
        self.responses.labels(str(ok).lower(), str(streaming).lower()).inc()
        if usage is not None:
            self.prompt_tokens.inc(usage.prompt_tokens)
            self.completion_tokens.inc(usage.completion_tokens)
            self.cached_tokens.inc(usage.cached_tokens)

    def exposition(self) -> bytes:
        self.models.sweep()  # (an idle door's stale model series go too, not only at a request)
        return generate_latest(REGISTRY) + generate_latest(self.registry)

    async def serve(
        self,
        host: str,
        port: int,
        aggregate: Callable[[], bytes] | None = None,
        readyz: Callable[[], str | None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: FrontLimits | None = None,
    ) -> tuple[MetricsListener, int]:
        """Start ``/metrics`` (and the pool aggregate, ``/v1/pool/aggregate``, when given) on ``host:port``
        (0 = ephemeral), with the front's ``limits`` (default ``FrontLimits()``); returns the listener
        (``cleanup()`` stops it) and the port."""

        async def handler(_request: Request) -> Response:
            return Response(body=self.exposition(), content_type=CONTENT_TYPE_LATEST)

        routes: dict[str, Handler] = {"/metrics": get_only(handler)}
        if readyz is not None:

            async def ready(_request: Request) -> Response:
                # 200 "ok", or 503 with the reason (RBAC error, not synced, not the leader, no endpoint).
                problem = readyz()
                status = 503 if problem else 200
                return Response(status=status, text=problem or "ok", content_type="text/plain")

            routes["/readyz"] = get_only(ready)
        if aggregate is not None:

            async def pool_aggregate(_request: Request) -> Response:
                return Response(body=aggregate(), content_type="application/json")

            routes[AGGREGATE_PATH] = get_only(pool_aggregate)

        async def not_found(request: Request) -> Response:
            return json_error(404, f"no route for {request.method} {request.path}")

        front = FrontServer.with_limits(routes, not_found, limits or FrontLimits())
        front.head_check = refuse_bodies  # (no route here reads a body: none is buffered)
        # Bind the socket ourselves so an ephemeral port can be read back; ``kvgate epp``'s check before
        # anything starts makes this same bind (``check_bindable``).
        sock = bind_one(host, port)
        try:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(front.protocol, sock=sock, ssl=ssl_context)
        except BaseException:  # (nothing of this listener left open)
            sock.close()
            raise
        return MetricsListener(server, front), sock.getsockname()[1]


def refuse_bodies(method: str, path: str, headers: dict[str, str]) -> Response | None:
    """The metrics port's head check: every route is GET / HEAD and reads no body, so any other method
    gets its 405 (``Allow: GET, HEAD``) and any body (a Content-Length over 0, or chunked) its 413 from the
    head, the body never buffered (the front lingers and drops it). Without it the front took every body
    into its budget (8 MiB each, 1 GiB in all) before the route's 405: 60 stalled 8 MiB POSTs held
    ~480 MiB in the process that serves Envoy's ext_proc (review s25-rev-fixqa25 R1)."""
    if method not in READ_METHODS:
        why = f"{method} is not allowed on {path}; use GET"
        return json_error(405, why, headers={"Allow": "GET, HEAD"})
    length = headers.get("content-length")
    if "transfer-encoding" in headers or (length is not None and length.strip("0")):
        return json_error(413, f"{path} takes no request body")
    return None


class MetricsListener:
    """The metrics port's server and its front (its connections and their deadlines)."""

    def __init__(self, server: asyncio.Server, front: FrontServer) -> None:
        self.server = server
        self.front = front

    async def cleanup(self) -> None:
        """Stop listening and close every connection (as ``kvgate serve`` closes its admin port)."""
        self.server.close()
        self.front.close_all()
        await self.server.wait_closed()
