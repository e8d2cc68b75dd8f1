"""The data path: parse once, pick, forward on a pooled connection, relay, account.

Retries: a connect error, a 5xx, or an upstream that dies before its first body byte is retried on
another endpoint (at most ``limits.max_attempts`` tries), never once a byte has gone to the client.
A timeout waiting for the answer's head (or a stream's first chunk) once the request was written is
not retried (504): the server may still be computing it. A non-streamed answer's head is waited for up
to the request's deadline, not the idle timeout (the server sends nothing until the generation is done).
A stream the upstream cuts later ends with one SSE ``error`` event (the openai SDK raises
``APIError`` on it) and no ``[DONE]``, so no client mistakes a truncated answer for a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final
from urllib.parse import unquote

import orjson

from kvgate.config.gateway import GatewayConfig, PoolConfig
from kvgate.config.rewrite import ModelRewriter, client_names
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.health import serving
from kvgate.datalayer.store import StoreChange
from kvgate.flowcontrol.controller import LLMD_FAIRNESS_HEADER, flow_key, flow_of
from kvgate.gateway import access
from kvgate.gateway.bigbody import PieceRewriter
from kvgate.gateway.errors import GatewayError, error_response, shutting_down, sse_error_event, unauthorized
from kvgate.gateway.health import HealthTracker
from kvgate.gateway.locate import RETRY_AFTER as LOCATE_RETRY_AFTER
from kvgate.gateway.locate import Locator
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.pools import Pool
from kvgate.gateway.preemption import Stop
from kvgate.gateway.shared_tenants import SharedRateLimiter, SharedTenants
from kvgate.gateway.stream import BodyRewriter, StreamRelay, pass_upstream_headers
from kvgate.gateway.tenants import ApiKeys, RateLimiter, load_keys, retry_after
from kvgate.gateway.upstream import (
    DeadlinePassed,
    ReadTimeout,
    StaleConnection,
    TruncatedBody,
    UpstreamPool,
    UpstreamResponse,
)
from kvgate.httpfront.budget import ByteBudget
from kvgate.httpfront.offload import OFF_LOOP_BYTES, off_loop, waiting_share, worth_the_thread
from kvgate.httpfront.server import Handler, Request, Response, StreamResponse
from kvgate.multicluster.epp_client import retry_after_s
from kvgate.openai import protocol as proto
from kvgate.openai.framing import whole_json
from kvgate.openai.progress import Progress, progress_events, progress_piece
from kvgate.openai.request import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MODELS_PREFIX,
    PATHS,
    STREAM_USAGE_PATHS,
    BodyError,
    ParsedBody,
    RequestPolicy,
    inference_request,
    kind_for_path,
    parse_body,
    server_priority,
)
from kvgate.openai.requeststats import ChunkGaps, RequestEnd
from kvgate.openai.responses import (
    RESPONSES_PATH,
    Leads,
    ResponseHomes,
    ResponseIdReader,
    ResponseTurns,
    finished_turn,
    follow_up,
    previous_response_id,
)
from kvgate.openai.sse import SSEScanner, first_event_held
from kvgate.openai.usage import BodyUsageScanner, usage_from_body
from kvgate.requestcontrol.director import Director, preempted_error
from kvgate.requestid import MAX_LEN as RID_MAX
from kvgate.requestid import shown as rid_shown
from kvgate.scheduling.plugins.session import response_cookie
from kvgate.scheduling.types import InferenceRequest, NoCapacityError, SchedulingError, Usage, prompt_tokens

log = logging.getLogger("kvgate.gateway")

OBJECTIVE_HEADER = proto.OBJECTIVE
FAIRNESS_HEADER = proto.FAIRNESS_ID
EXPLAIN_HEADER = "x-kvgate-explain"
# Asked for with "1": the reply carries when each step of this request happened, on the gateway's
# monotonic clock (CLOCK_MONOTONIC, the same a client on the host reads with time.monotonic()), so a
# benchmark can split its TTFT (scripts/realvllm/vs_sglang.py --breakdown). Never forwarded.
TIMING_HEADER = "x-kvgate-timing"
PICK_HEADER = "x-kvgate-pick"
# Never forwarded upstream nor shown to plugins: hop-by-hop headers, ones the gateway sets itself, and
# routing controls a client must not be able to use to choose its backend.
_DROP = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "accept-encoding",
        "expect",
        proto.REQUEST_ID,
        proto.TEST_ENDPOINT_SELECTION,
        proto.CONFORMANCE_SERVED,
    }
)
_DROP_PREFIXES = ("x-gateway-", "x-kvgate-")
_UPSTREAM_ERRORS = (TimeoutError, OSError)  # UpstreamError is an OSError
_EXPLAIN_HEADER_MAX = 4096


class _NextAttempt(Exception):
    """Ends one attempt of ``Proxy._dispatch`` to go on to the next, its ``finally`` run: the ``continue``
    it replaces is unimplemented inside ``try``/``finally`` in mypyc (the optional compiled build)."""


_REQUEST_LINES_MAX = 4096  # cached upstream request lines (API x endpoint address)
# A non-streamed answer held whole at most (``kvgate epp`` holds 16 MiB, but per request and with a
# global cap; here 4 MiB: completions and chats are far smaller, and a bigger answer, an embeddings
# batch or ``prompt_logprobs``, is relayed as it comes with its usage read as it passes), and
# all the answers one process holds together (``kvgate serve --clusters``' ``_USAGE_HELD`` is 256 MiB).
WHOLE_BODY_MAX: Final = 4 << 20
HELD_BODIES_MAX: Final = 64 << 20
WARM_WAIT_S = 1.0  # longest the start-up waits for its upstream connections (best effort)


def tls_context(cfg: PoolConfig) -> ssl.SSLContext:
    """Certificate and host name verified, against ``caFile`` or the system's CAs."""
    return ssl.create_default_context(cafile=cfg.ca_file)


def _filter_headers(
    headers: Mapping[str, str],
) -> tuple[dict[str, str], str | None, str | None, bool, bool]:
    """One pass: (forwardable headers, objective, fairness id, explain?, timing?). llm-d's fairness header
    is read and stripped as GIE's is (review s26-qa F7): the fairness id is ``flow_key``'s (llm-d's unless
    absent, empty or the default flow, else GIE's: rev-c36 F3), so ``flow_of`` names the same flow without it.
    llm-d's objective header likewise (qa36b-F4), preferred over GIE's (``proto.objective_of``)."""
    out: dict[str, str] = {}
    objective = fairness = llmd = llmd_objective = None
    explain = timing = False
    conn = headers.get("connection")
    # Headers the client names in Connection are hop-by-hop too (RFC 9110 7.6.1).
    hop: frozenset[str] = frozenset(t.strip().lower() for t in conn.split(",")) if conn else frozenset()
    for k, v in headers.items():
        lk = k.lower()
        if lk in _DROP or lk in hop:
            continue
        if lk.startswith(_DROP_PREFIXES):
            if lk == OBJECTIVE_HEADER:
                objective = v
            elif lk == FAIRNESS_HEADER:
                fairness = v
            elif lk == EXPLAIN_HEADER:
                explain = v.strip().lower() in ("1", "true", "yes")
            elif lk == TIMING_HEADER:
                timing = v.strip() == "1"
            continue
        if lk == LLMD_FAIRNESS_HEADER:
            llmd = v
            continue
        if lk == proto.LLMD_OBJECTIVE:
            llmd_objective = v
            continue
        if lk == proto.LLMD_MODEL_REWRITE:
            continue  # (a control header, as GIE's x-gateway-model-name-rewrite: never to the server)
        out[lk] = v
    if llmd:  # the one rule of both doors (an empty GIE id is absent: review s26-rev-fixqa26b F1)
        fairness = flow_key(fairness, llmd)
    return out, proto.objective_of(objective, llmd_objective), fairness, explain, timing


def _end_to_end(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]``, unless the client named it in Connection (hop-by-hop: ``_filter_headers`` drops
    it)."""
    value = headers.get(name)
    if value is not None:
        conn = headers.get("connection")
        if conn and name in (t.strip().lower() for t in conn.split(",")):
            return None
    return value


def _pass_back_off(status: int, upstream: Mapping[str, str], reply: dict[str, str]) -> None:
    """A model server's 429 / 503 passed to the client keeps its back-off: its ``Retry-After`` (read and
    bounded as ``--clusters`` reads a cluster's), a 429 without one gets the default as the gateway's own
    429s do (review s18-gw L3: it was dropped). A server's ``x-envoy-ratelimited`` is not passed on: one
    server's limit is the pool's capacity to whoever is in front (``--clusters`` fails over on it), only the
    gateway's own tenant limit is the client's (review s18-qa2 M1)."""
    wait = retry_after_s(upstream.get("retry-after"))
    if wait is not None:
        reply["Retry-After"] = str(wait)
    elif status == 429:
        reply["Retry-After"] = proto.RETRY_AFTER_DEFAULT


def _timing_value(marks: dict[str, float]) -> str:
    return ",".join(f"{k}={v:.6f}" for k, v in marks.items())


# ``/debug/picks`` keeps at most this many bytes of explanations (review s28-qa Q5: by count alone, 1,024
# explanations of ~126 KB each at 1,000 endpoints pinned ~122 MiB, and any client may ask for one).
PICK_LOG_BYTES = 16 << 20


class PickLog:
    """Ring buffer of pick explanations by request id (``/debug/picks/<id>``): the last ``capacity``, and
    at most ``max_bytes`` of them (the oldest dropped first); one larger than ``max_bytes`` is not kept."""

    def __init__(self, capacity: int = 1024, max_bytes: int = PICK_LOG_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def put(self, request_id: str, explanation: bytes) -> bool:
        """Keep ``explanation``; False when it alone is over ``max_bytes`` (not kept)."""
        old = self._items.pop(request_id, None)
        if old is not None:
            self._bytes -= len(old)
        if len(explanation) > self.max_bytes:
            return False
        self._items[request_id] = explanation
        self._bytes += len(explanation)
        while len(self._items) > self.capacity or self._bytes > self.max_bytes:
            self._bytes -= len(self._items.popitem(last=False)[1])
        return True

    def get(self, request_id: str) -> bytes | None:
        return self._items.get(request_id)


# ``Retry-After`` of the 429 over ``limits.maxConcurrentRequests`` (seconds; docs/gateway.md "Errors").
CONCURRENCY_RETRY_AFTER = "1"


# RFC 9110 §9.1: a resource that takes GET takes HEAD (the front sends a HEAD answer's headers only).
_READ_METHODS = ("GET", "HEAD")


def _home_lost(why: str) -> GatewayError:
    """A follow-up's home failed before its answer (a connection error, a lost answer): the client's 503
    with ``Retry-After``, not a retry elsewhere, where vLLM can only answer 404 "Response ... not found"
    (the stored response lives at its home; prev26)."""
    return GatewayError(
        503,
        f"the endpoint holding the response this follow-up names failed ({why}); the follow-up is not sent"
        " elsewhere (the stored response is not there): retry later",
        code="upstream_unavailable",
        retry_after=LOCATE_RETRY_AFTER,
    )


def _read_only(request: Request) -> Response:
    why = f"{request.method} is not allowed on {request.path}; use GET"
    resp = error_response(GatewayError(405, why))
    resp.headers["Allow"] = "GET, HEAD"  # (RFC 9110 15.5.6: a 405 names the methods the resource takes)
    return resp


class Proxy:
    def __init__(
        self,
        cfg: GatewayConfig,
        pools: list[Pool],
        metrics: GatewayMetrics,
        health: HealthTracker,
        clock: Callable[[], float] = time.monotonic,
        tenants: SharedTenants | None = None,
    ) -> None:
        self.cfg = cfg
        self.pools = pools
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.rewriter = ModelRewriter(cfg.rewrites, cfg.rewrite_seed)
        self.picks = PickLog()
        # model or adapter name -> pool serving it
        self.routes: dict[str, Pool] = {}
        self.pool_by_name = {pool.name: pool for pool in pools}
        for pool in pools:
            for name in (*pool.cfg.models, *pool.cfg.adapters):
                self.routes[name] = pool
        # What configuration adds to a body, per pool (kvgate.openai.request, shared with kvgate epp).
        self.policies = {
            pool.name: RequestPolicy(
                pool.adapters, cfg.session_header, cfg.objectives, pool.cfg.pass_priority
            )
            for pool in pools
        }
        lim = cfg.limits
        self.upstream = UpstreamPool(lim.connect_timeout_s, lim.idle_timeout_s)
        # An endpoint that leaves every pool (a reload, Kubernetes discovery) has its upstream connections
        # closed, as Envoy drains a removed host's pool: nothing else would take them again (s28-qa Q2).
        for pool in pools:
            pool.store.add_listener(self._on_store_change)
        # Who may call and how much (kvgate.gateway.tenants); None = open / unlimited.
        self.keys = (
            ApiKeys(load_keys(cfg.api_keys_file, cfg.api_keys_env))
            if cfg.api_keys_file or cfg.api_keys_env
            else None
        )
        rpm, tpm = cfg.rate_requests_per_minute, cfg.rate_tokens_per_minute
        # Under ``--workers`` (``tenants``: the fleet's table in the shared segment) the buckets and the
        # ``maxConcurrentRequests`` count are the fleet's (review s18-qa M1: they were per worker).
        self.limiter: RateLimiter | SharedRateLimiter | None = None
        if rpm or tpm:
            self.limiter = (
                RateLimiter(rpm, tpm, clock)
                if tenants is None
                else SharedRateLimiter(tenants, rpm, tpm, clock)
            )
        self.fleet_inflight = tenants
        self.hide = cfg.hide_internal_addresses
        # https pools: one verifying client context each (CA file or the system's CAs).
        self.tls = {p.name: tls_context(p.cfg) for p in pools if p.cfg.scheme == "https"}
        self.request_timeout = lim.request_timeout_s or None
        # A non-streamed answer is held whole (usage read, model put back, retried elsewhere if it
        # breaks) up to ``whole_max`` bytes, and all held answers together up to ``held``'s limit;
        # past either it is relayed as it arrives (``_relay_whole``).
        self.whole_max = WHOLE_BODY_MAX
        self.held = ByteBudget(HELD_BODIES_MAX)
        self.inflight = 0
        metrics.track_inflight(lambda: self.inflight)
        # Cached: asyncio.get_running_loop() costs a getpid() system call per call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        # The upstream responses of the streams and big answers being relayed now (``_relay_stream``,
        # ``_relay_whole``): the drain's deadline cuts them (``cut_streams``), and those it cut, with the
        # reason their client is told.
        self.streams: set[Any] = set()
        self._cut: dict[Any, float] = {}
        # Set by ``cut_streams``: its drain deadline, which a stream that starts relaying after the cut is
        # cut with at once.
        self._cutting: float | None = None
        self._rid_prefix = os.urandom(4).hex()
        # Responses API ids -> the endpoint that answered them: a follow-up (``previous_response_id``)
        # is picked there (vLLM keeps a stored response in the server that made it; ``_prepare``).
        self.responses: ResponseHomes[str] = ResponseHomes(clock=clock)
        # And, for an id made through a model rewrite, (the name sent, the client's): a lookup's answer
        # has the client's name put back, as the create's had (``gateway.lookups``, review s19-qa2 L2).
        self.response_models: ResponseHomes[tuple[str, str]] = ResponseHomes(clock=clock)
        # And each finished turn's tokens and prefix blocks: a follow-up's estimate is the conversation's,
        # not its new input's (``openai.responses.ResponseTurns``; ``--response-turns`` sizes it).
        self.turns = ResponseTurns(cfg.limits.response_turns, clock=clock)
        # And the latest turns' heads by key: a follow-up repeating its turn's head is not hashed (prev25).
        self.leads = Leads()
        # A follow-up whose home none of these knows (a restart, an id aged out): asked of the endpoints
        # (``gateway.locate``); ``_prepare`` leaves such a follow-up's (id, home or None) here for
        # ``_entry``, which reads it right after (no await between: one request's at a time).
        self.locator = Locator(self.upstream, clock)
        self._unplaced: tuple[str, str | None] | None = None
        self._request_lines: dict[tuple[str, str], bytes] = {}
        self._rid_seq = 0
        # The routes' handlers: ``_entry`` with its kind bound (a C-level partial, not a Python call per
        # request; each hands the front ``_entry``'s coroutine to await).
        # With the access log on (``accessLog``, default off, and ``kvgate.access`` at INFO at start), each
        # through ``access.logged`` (its line at the end); off, nothing of it runs (``notes`` None: qa24
        # F4; the wrapper and its line ~N us/req: docs/gateway.md "Access log").
        on = cfg.access_log and access.ACCESS.isEnabledFor(logging.INFO)
        self.notes: dict[int, access.Note] | None = {} if on else None
        # (the lines' buffer, written about once a second: ``close_access`` at stop; R4)
        self.access_lines = access.Lines.open(cfg.access_log_file) if on else None
        if self.access_lines is not None:  # (lines the output did not take: counted, gw25)
            metrics.access_dropped.source = self.access_lines.dropped
        self._handle: Any = (
            self._entry
            if self.access_lines is None or self.notes is None
            else functools.partial(access.logged, self._entry, self.notes, self.clock, self.access_lines)
        )
        self.completions: Handler = functools.partial(self._handle, COMPLETIONS)
        self.chat: Handler = functools.partial(self._handle, CHAT)
        self.embeddings: Handler = functools.partial(self._handle, EMBEDDINGS)

    def _on_store_change(self, change: StoreChange) -> None:
        address = change.endpoint.address
        if change.kind == "added":
            self.upstream.restore(address)
        elif change.kind == "removed":
            # Decided a loop turn later: a reload syncs its pools one by one, and an address moving from
            # one pool to another is in neither between the two syncs (review s28-rev-c28 F3).
            try:
                asyncio.get_running_loop().call_soon(self._retire_if_in_no_pool, address)
            except RuntimeError:  # (no loop: nothing is connected either)
                self._retire_if_in_no_pool(address)

    def _retire_if_in_no_pool(self, address: str) -> None:
        if not any(address in p.store for p in self.pools):
            self.upstream.retire(address)

    def close_upstream(self) -> None:
        """Every upstream connection closed, the stores no longer heard (the gateway's stop)."""
        for pool in self.pools:
            pool.store.remove_listener(self._on_store_change)
        self.upstream.close()

    def close_access(self) -> None:
        """Writes the access lines not written yet (the gateway's stop)."""
        if self.access_lines is not None:
            self.access_lines.close()

    def cut_streams(self, drain_s: float) -> int:
        """The drain's deadline (``drain_s``): abort the upstream request of every stream being relayed (the
        model server stops generating); each one's relay then ends its client's stream with
        ``protocol.drain_cut_event`` (an error event as for an upstream cut, status 503, in its API's shape)
        and a clean end of the body, instead of the connection closing mid-body. Returns how many were cut.

        A stream is marked cut here, explicitly (``_cut``), before its connection is aborted: a body
        framed by the close reads the abort as its clean end, so the relay asks ``_cut``, not the
        framing. One whose body already arrived whole is not cut (its relay ends it as usual). A stream
        that starts relaying after this (its first chunk came later) is cut at its start the same way.
        A non-streamed answer being relayed as it arrives (``_relay_whole``) is cut the same way; a JSON
        body cannot carry an event, so its client's connection is closed mid-body instead."""
        self._cutting = drain_s
        n = 0
        for resp in self.streams:
            if resp.received:
                continue
            self._cut[resp] = drain_s
            resp.close()
            n += 1
        return n

    def _request_id(self) -> str:
        # (``_entry`` inlines this: keep the two in step; review s21-cpu F2)
        self._rid_seq += 1
        return f"{self._rid_prefix}-{self._rid_seq:x}"

    # --- entry points -------------------------------------------------------------------------
    async def warm_upstreams(self) -> None:
        """One kept-alive connection to every endpoint before the gateway says ready, so the first
        requests do not pay a connect (tens of ms on a loaded machine)."""
        up = self.upstream
        warm = [up.warm(ep.address, self.tls.get(p.name)) for p in self.pools for ep in p.endpoints()]
        # Best effort: an unreachable endpoint must not hold the start.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WARM_WAIT_S):
                await asyncio.gather(*warm)

    def other(self, request: Request) -> Coroutine[Any, Any, Response | StreamResponse]:
        """``OTHER_PATHS`` (``/v1/responses``, ``/v1/rerank``, ...): the path is the kind (sent as is)."""
        return self._handle(request.path, request)

    async def models(self, request: Request) -> Response | StreamResponse:
        if request.method not in _READ_METHODS:
            return _read_only(request)
        data = self.model_list()
        return Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")

    async def model(self, request: Request) -> Response | StreamResponse:
        """``GET /v1/models/{id}`` (the openai SDK's ``models.retrieve``): the entry ``/v1/models`` lists
        under that id (the first), else OpenAI's 404 ``model_not_found``."""
        if request.method not in _READ_METHODS:
            return _read_only(request)
        wanted = unquote(request.path[len(MODELS_PREFIX) :])
        for entry in self.model_list():
            if entry["id"] == wanted:
                return Response(body=orjson.dumps(entry), content_type="application/json")
        why = f"The model '{wanted}' does not exist"
        return error_response(GatewayError(404, why, param="model", code="model_not_found"))

    def model_list(self) -> list[dict[str, Any]]:
        """What ``/v1/models`` lists: per pool its models, its adapters (``parent``: the pool's first
        model) and the names the rewrite rules in force (the config's, or the live InferenceModelRewrite
        rules) send to them (``root``: the rule's target there), each name once per pool."""
        data: list[dict[str, Any]] = []
        rules = self.rewriter.rules
        for pool in self.pools:
            entries: list[tuple[str, str, str | None]] = [(m, m, None) for m in pool.cfg.models]
            entries += [(a, a, pool.cfg.models[0]) for a in pool.cfg.adapters]
            listed = {e[0] for e in entries}
            entries += [(n, t, None) for n, t in client_names(rules, listed) if n not in listed]
            for name, root, parent in entries:
                data.append({"id": name, "object": "model", "created": 0, "owned_by": "kvgate", "root": root,
                             "parent": parent, "pool": pool.name})  # fmt: skip
        return data

    def _rate_limited(
        self, request: Request, tenant: str | None, rid: str, path: str = ""
    ) -> Response | None:
        """The tenant's ``rateLimits`` at admission (one request taken from its requestsPerMinute): the
        429 to answer (``path``: its API's shape, ``error_response``), or None when admitted. Also for a
        Responses lookup (review s19-fc L2), which is charged no tokens (it generates none)."""
        assert self.limiter is not None
        # The tenant as flow control names the flow (``flow_of``): the key's, else either fairness
        # header (``flow_key``: llm-d's, then GIE's), else the default flow (review s18-qa L4: llm-d's
        # was not read).
        # Read as ``_filter_headers`` reads the headers the request's flow comes from (a header the
        # client names in Connection is hop-by-hop: not the tenant), so the tenant admitted is the
        # request's flow and the one ``_charge`` (``flow_of``) charges, with or without rate limits
        # (s18-gw M2, s18-fixes-a L1, s18-fixes-b L2).
        hs = request.headers
        who = tenant or flow_key(_end_to_end(hs, FAIRNESS_HEADER), _end_to_end(hs, LLMD_FAIRNESS_HEADER))
        wait = self.limiter.admit(who)
        if wait is not None:
            self.metrics.error("", "", "429")
            resp = error_response(
                GatewayError(429, f"rate limit exceeded for {who!r}", code="rate_limit_exceeded"), rid, path
            )
            resp.headers["Retry-After"] = retry_after(wait)
            resp.headers[proto.RATE_LIMITED] = "true"  # the tenant's limit, not the pool's capacity
            return resp
        return None

    async def _entry(self, kind: str, request: Request) -> Response | StreamResponse:
        # Its refusals here in its API's shape (``kind`` is the path: Anthropic's on ``/v1/messages``,
        # review s23-rev-fixqa23 R1), as the picker's and the model server's.
        rid = request.headers.get("x-request-id")
        if not rid or len(rid) > RID_MAX or not (rid.isascii() and rid.isprintable()):
            if rid:  # over the bound or unprintable: replaced, not forwarded (qa24 F6)
                log.info("x-request-id %s replaced by a generated one", rid_shown(rid))
            self._rid_seq += 1  # (``_request_id`` inlined: once per request)
            rid = f"{self._rid_prefix}-{self._rid_seq:x}"
        if self.notes is not None and (note := self.notes.get(id(request))) is not None:
            note.rid = rid  # (its access line's, also when its client leaves before the answer: qa35b F2)
        if request.method != "POST":
            resp = error_response(
                GatewayError(405, f"{request.method} is not allowed on {request.path}; use POST"), rid, kind
            )
            resp.headers["Allow"] = "POST"
            return resp
        if self.draining:
            return shutting_down(rid, kind)  # (503, Retry-After, Connection: close)
        tenant: str | None = None
        if self.keys is not None:
            tenant = self.keys.tenant(request.headers)
            if tenant is None:
                self.metrics.error("", "", "401")
                return unauthorized(rid, kind)
        if (
            self.limiter is not None
            and (limited := self._rate_limited(request, tenant, rid, kind)) is not None
        ):
            return limited
        fleet = self.fleet_inflight
        if (
            self.inflight >= self.cfg.limits.max_concurrent_requests
            if fleet is None
            else not fleet.enter(self.cfg.limits.max_concurrent_requests)
        ):
            self.metrics.error("", "", "429")
            resp = error_response(
                GatewayError(429, "too many concurrent requests", code="too_many_requests"), rid, kind
            )
            # A slot frees as soon as any request in flight ends: retry soon (review s17-qa L8).
            resp.headers["Retry-After"] = CONCURRENCY_RETRY_AFTER
            return resp
        if not self.inflight:
            self.idle.clear()  # (an ``Event.clear`` is a Python call: only when the count leaves 0)
        self.inflight += 1
        held = None  # (bounded labels: a name not the config's, in flight; ``ModelLabels.hold``)
        running = None  # (the model label counted in ``inference_objective_running_requests``)
        try:
            t0 = self.clock()
            # A big body is parsed on the parse thread, not the loop (``httpfront.offload``): its parse
            # stalled every other connection (up to seconds for a hostile 8 MiB body); one of few
            # strings and containers up to 1 MiB stays (cheap: not queued behind slow parses).
            big = request.content_length > OFF_LOOP_BYTES and worth_the_thread(request.body)
            pre = await self._parse_off_loop(request, kind) if big else None
            # (the request is prepared by a plain call and dispatched from here: no coroutine layer)
            pool, ireq, out, header_block, client_model, strip_usage, explain, t0, marks = self._prepare(
                request, kind, rid, t0, tenant, pre
            )
            # (a Responses ``_prepare`` always sets it: a follow-up it could not pin, else None)
            unplaced = self._unplaced if kind == RESPONSES_PATH else None
            models = self.metrics.models
            if models is not None and client_model not in models.known:
                held = models
                models.hold(client_model)
                models.label(client_model)  # (seen now, while it is a label: kept to the request's end)
            # (``ireq.fairness_id`` is ``flow_of(ireq)`` here: ``_prepare`` resolved llm-d's fairness header
            # into it and stripped that header from ``ireq.headers``; two Python calls fewer, at the start
            # and at the end of every request)
            running = self.metrics.start(
                client_model, ireq.model, request.content_length, ireq.fairness_id, ireq.priority
            )
            try:
                # (one ``requestTimeoutSeconds`` from here for the ask and the dispatch, not one each:
                # review s26-rev-prev26 F6)
                begun = self._loop.time()
                if unplaced is not None:
                    await self._place(request, pool, ireq, *unplaced, begun)
                return await self._dispatch(
                    request,
                    kind,
                    pool,
                    ireq,
                    rid,
                    out,
                    header_block,
                    client_model,
                    strip_usage,
                    explain,
                    t0,
                    marks,
                    begun,
                    running,
                )
            except GatewayError as e:
                self.metrics.error(client_model, ireq.model, str(e.status), (running[2], running[3]))
                raise
        except GatewayError as e:
            return error_response(e, rid, kind)  # (``/v1/messages``: in Anthropic's shape)
        finally:
            if running is not None:
                self.metrics.stop(running)
            if held is not None:
                held.drop(client_model)
            if fleet is not None:
                fleet.leave()
            self.inflight -= 1
            if self.inflight == 0:
                self.idle.set()

    async def _place(
        self, request: Request, pool: Pool, ireq: InferenceRequest, prev: str, home: str | None, start: float
    ) -> None:
        """A follow-up naming ``prev`` whose home ``_prepare`` could not pin (prev26). A home in the pool but
        not ready: 503 with ``Retry-After`` (its stored response is there only; anywhere else vLLM's 404).
        Not known (a restart, an id past the tables' bounds) or no longer in the pool: asked of the pool's
        ready endpoints (``gateway.locate``); found: remembered and pinned there; found nowhere: picked as
        before (vLLM's 404 is then true); some could not answer: 503 with ``Retry-After``."""
        if home is not None:
            for ep in pool.endpoints():
                if ep.address == home:
                    raise GatewayError(
                        503,
                        f"{self._upstream_name(ep)}, which holds response '{prev}' that this follow-up names,"
                        " is not ready; the follow-up is not sent elsewhere (the stored response is not"
                        " there): retry later",
                        code="upstream_unavailable",
                        retry_after=LOCATE_RETRY_AFTER,
                    )
        tls = self.tls.get(pool.name)
        asked = [(ep.address, tls) for ep in pool.endpoints() if ep.healthy]
        if not asked:
            return  # (the pick answers its own 503)
        # (within the request's bound, as its queue wait: past it, 504; the round goes on for others)
        due = start + self.request_timeout if self.request_timeout else None
        try:
            async with asyncio.timeout_at(due):
                found = await self.locator.find(prev, asked, self._client_key(request))
        except TimeoutError:
            raise GatewayError(
                504,
                f"no answer within requestTimeoutSeconds ({self.request_timeout:g}s): the endpoints were"
                f" being asked where response '{prev}' is kept",
                code="request_timeout",
            ) from None
        if found.home is not None:
            self.responses.remember(prev, found.home)
            ireq.subset, ireq.subset_soft = frozenset((found.home,)), True
        elif found.unanswered:  # (may be kept there, a key refused elsewhere or not: s26-rev-fixes26 F3)
            raise GatewayError(
                503,
                f"response '{prev}' that this follow-up names was not found, and {found.unanswered} of"
                f" {found.asked} endpoints could not be asked (it may be kept there): retry later",
                code="upstream_unavailable",
                retry_after=LOCATE_RETRY_AFTER,
            )

    def _client_key(self, request: Request) -> str:
        """The client's key as header lines for an ask of an endpoint (``gateway.locate``); none where the
        gateway checks keys itself (``auth``: its key is not the model server's)."""
        if self.keys is not None:
            return ""
        h = request.headers
        return "".join(f"{k}: {h[k]}\r\n" for k in ("authorization", "x-api-key") if k in h)

    def _read_body(self, request: Request) -> bytes:
        # The front already refused bodies over the limit (413) while reading them, and has the whole
        # body before the handler runs (``request.body``: no coroutine to await for it).
        # (``_prepare`` repeats this check inline: keep the two in step; review s21-cpu F2)
        limit = self.cfg.limits.max_body_bytes
        if request.content_length > limit:
            self.metrics.error("", "", "413")  # (counted here, like the 404: never in ``_entry``)
            raise GatewayError(413, f"request body of {request.content_length} bytes exceeds {limit} bytes")
        return request.body

    # --- one request --------------------------------------------------------------------------
    async def _parse_off_loop(self, request: Request, kind: str) -> ParsedBody | None:
        """A big body's ``parse_body`` on the parse thread (``httpfront.offload``); None: over the body
        cap (``_prepare`` refuses it, unparsed). Raises ``GatewayError`` as ``_prepare`` does."""
        if request.content_length > self.cfg.limits.max_body_bytes:
            return None
        parse = functools.partial(parse_body, kind if kind in PATHS else kind_for_path(kind))
        try:
            # (clients take turns, each within its share of the body budget under pressure: gw25, s25-rev F2)
            limits = self.cfg.limits
            budget = limits.max_buffered_bytes
            share = waiting_share(limits.max_waiting_bytes_per_client, budget)
            return await off_loop(parse, request.body, request.peer, share, budget)
        except BodyError as e:
            raise self._body_error(e) from None

    def _body_error(self, e: BodyError) -> GatewayError:
        # Counted once, unlabelled (no model yet), like the 404 in ``_prepare``: ``_entry`` counts only
        # what ``_dispatch`` raises.
        self.metrics.error("", "", str(e.status))
        return GatewayError(e.status, e.message, param=e.param)

    def _prepare(
        self,
        request: Request,
        kind: str,
        rid: str,
        t0: float,
        tenant: str | None = None,
        parsed: ParsedBody | None = None,
    ) -> tuple[Pool, InferenceRequest, bytes, bytes, str, bool, bool, float, dict[str, float] | None]:
        """Parse (unless ``parsed``: done off the loop), route and build what goes upstream:
        ``_dispatch``'s arguments after the request, kind and id (pool, request, body, header block,
        client model, strip usage, explain, arrival, marks). Raises ``GatewayError``."""
        # (``_read_body``'s check inlined: its refusal is its own call)
        fits = request.content_length <= self.cfg.limits.max_body_bytes
        raw = request.body if fits else self._read_body(request)
        if parsed is None:
            try:
                # (an ``OTHER_PATHS`` kind is its path: ``/v1/responses`` and ``/v1/messages`` are read)
                parsed = parse_body(kind if kind in PATHS else kind_for_path(kind), raw)
            except BodyError as e:
                raise self._body_error(e) from None
        client_model = parsed.model
        target = self.rewriter.rewrite(client_model) if self.rewriter.active else client_model
        pool = self.routes.get(target)
        if pool is None:
            self.metrics.error("", "", "404")
            raise GatewayError(
                404, f"The model '{client_model}' does not exist", param="model", code="model_not_found"
            )
        headers, objective, fairness, explain, timing = _filter_headers(request.headers)
        if self.keys is not None:
            fairness = tenant  # the key decides the tenant, never a client header
            headers.pop("authorization", None)  # the gateway's key is not the model server's
            headers.pop("x-api-key", None)
        explain = explain and not self.hide
        strip_usage = False
        changed = target != client_model
        if changed:
            parsed.body["model"] = target
        policy = self.policies[pool.name]
        if policy.pass_priority and server_priority(parsed.body, policy, objective):  # (pools[].passPriority)
            changed = True
        if parsed.stream and not parsed.client_wants_usage and kind in PATHS:
            # Ask for the final usage chunk so the in-flight accounting sees real token counts, and
            # strip it from what the client sees since it did not ask for it.
            opts = parsed.body.get("stream_options") or {}
            parsed.body["stream_options"] = opts = {**opts, "include_usage": True}
            if opts.get("continuous_usage_stats"):
                # (with include_usage, vLLM's usage in every chunk: the client asked for none; qa32a Q3)
                opts["continuous_usage_stats"] = False
            strip_usage = changed = True
        out = orjson.dumps(parsed.body) if changed else raw
        # The picker tracks requests by id, so it gets a unique one even when clients reuse theirs;
        # the client's x-request-id is what goes upstream and back.
        internal = self._request_id() if "x-request-id" in request.headers else rid
        ireq = inference_request(
            parsed,
            request_id=internal,
            model=target,
            policy=policy,
            session=headers.get(policy.session_header),
            objective=objective,
            fairness=fairness,
            headers=headers,
            arrival_time=t0,
        )
        if kind == RESPONSES_PATH:
            prev = previous_response_id(kind, parsed.body)
            # The earlier turn's tokens and blocks (a follow-up), and this turn's kept for the next.
            turns = self.turns
            turn = turns.get(prev) if prev is not None else None
            # (no heads kept where no turn is: ``--response-turns 0``, review s25-rev-prev25 F3; those
            # kept before a reload to 0 let go)
            leads = self.leads if turns.max_entries else None
            if leads is None and len(self.leads):
                self.leads = Leads()
            follow_up(ireq, parsed.body.get("store", True), turn, parsed.lead_chars, leads)
            if prev is not None:
                # A Responses follow-up: picked among the endpoint that made the response it names, while
                # that one is known and healthy (elsewhere vLLM answers 404). Its kept turn says where
                # first (under ``--workers`` the table's one read gave both, prev25), else the ids' map:
                # an id whose home the map lost (displaced, or a turn kept in use longer) is still pinned
                # to the holder of its conversation, not placed by its chain's score (prev25).
                home = turn.home if turn is not None and turn.home else self.responses.home(prev)
                # Soft: if the home leaves the pool while the request is queued, the pick drops the pin
                # and picks it as any request, as on arrival then (review s19-qa L4; not ready: it
                # waits, I1).
                if home is not None and any(ep.address == home and ep.healthy for ep in pool.endpoints()):
                    ireq.subset, ireq.subset_soft = frozenset((home,)), True
                    self._unplaced = None
                else:  # (not known, or not ready: ``_place`` before the pick; prev26)
                    self._unplaced = prev, home
            else:
                self._unplaced = None
        headers["x-request-id"] = rid
        headers["content-type"] = "application/json"
        # Header block built once; each attempt only prepends its request line and Host. (Joined in C:
        # ``": ".join`` of each (name, value) pair, all str, without a comprehension or a string per line.)
        header_block = (
            "\r\n".join(map(": ".join, headers.items())) + f"\r\ncontent-length: {len(out)}\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
        # recv: the whole request is in (the front reads the body before the handler runs).
        marks = {"recv": t0, "parsed": self.clock()} if timing and not self.hide else None
        return pool, ireq, out, header_block, client_model, strip_usage, explain, t0, marks

    @staticmethod
    def _retry_pick(pool: Pool, director: Any, ireq: InferenceRequest, tried: set[str], explain: bool) -> Any:
        """A retry's pick: only endpoints not tried yet are eligible (admitted already: no second wait).
        ``director``: the one this request holds from its first pick to its finish (a config reload may
        swap ``pool.director`` meanwhile: a retry is still this one's, never the new one's)."""
        ireq.subset = Proxy._left_to_try(pool, director, tried)
        ireq.subset_soft = False
        if not ireq.subset:
            raise NoCapacityError("every endpoint failed for this request")
        return director.pick(ireq, explain)

    @staticmethod
    def _left_to_try(pool: Pool, director: Any, tried: set[str]) -> frozenset[str]:
        """The untried endpoints where traffic can go now: of the pool's best standing
        (``datalayer.health.serving``), not the best of the untried, so a server down by its scrapes
        beside a live one is nowhere to retry (review s30-qa30 Q7: the fail-open over the untried sent
        the retry of a busy server's 429 to a dead one, the client got its 503)."""
        now = director.clock()
        return frozenset(
            ep.address for ep in serving(pool.endpoints(), now, director.health) if ep.address not in tried
        )

    @staticmethod
    def _untried(result: Any, tried: set[str]) -> Endpoint:
        for ep in result.endpoints:
            if ep.address not in tried:
                return ep
        raise NoCapacityError("no untried endpoint left for this request")

    async def _dispatch(
        self,
        request: Request,
        kind: str,
        pool: Pool,
        ireq: InferenceRequest,
        rid: str,
        out: bytes,
        header_block: bytes,
        client_model: str,
        strip_usage: bool,
        explain: bool,
        t0: float,
        marks: dict[str, float] | None = None,
        start: float | None = None,
        running: tuple[str, str, str, str] | None = None,
    ) -> Response | StreamResponse:
        tried: set[str] = set()
        # An endpoint that answered this request a 500, not charged yet: if another endpoint answers it
        # a 500 too, the request is the culprit (a "query of death": an engine error on some input),
        # neither endpoint is charged and it is not tried a third time; else it is charged. (502, 503,
        # 504 say overload or draining, the server's state: charged and retried as before.)
        suspect: Endpoint | None = None
        took = False  # an endpoint answered a head, then its body was lost (it generated: charged)
        # Read once: every pick, dispatch and finish of this request goes to this Director, even if a
        # config reload swaps the pool's picker meanwhile (``gateway.reload``).
        director = pool.director
        last_error = "no endpoint tried"
        # ``requestTimeoutSeconds`` bounds the client's whole wait from here (its arrival: the front read
        # the body before the handler ran): flow control's queue and earlier attempts included.
        # (``start``: ``_entry``'s, before a follow-up's ask of where its home is: one bound for both)
        start = self._loop.time() if start is None else start
        deadline = start + self.request_timeout if self.request_timeout else None
        sent_model = ireq.model if ireq.model != client_model else None
        tls = self.tls.get(pool.name)
        # A Director without flow control: its ``admit`` is ``pick`` and nothing is preemptible (both
        # asked without a call). Any other director (a multi-cluster pool's, a wrapper) is asked as before.
        no_flow = type(director) is Director and director.flow is None
        # A Responses follow-up picked on its home (``_prepare``'s subset). With flow control it is admitted
        # as any request, queued pinned to its home while that is saturated (review s18-fixes-b M1, M2: the
        # pin is kept, the dispatcher's arrival rule and sloAdmission apply); while it waits there the
        # dispatcher passes over it, keeping its place (review s18-doors M3). ``pinned`` ends with the
        # first retry that leaves the home (review s18-fixes-b L1), not with a stale connection's resend.
        pinned = ireq.subset is not None
        note = self.notes.get(id(request)) if self.notes is not None else None  # (the access log's)
        if note is not None:
            note.model = client_model
        # An endpoint whose kept-alive connection closed before any answer byte (``StaleConnection``):
        # the next attempt resends to it on a new connection, counted as any retry (qa24 F2). Once per
        # request that resend spends no try of ``maxAttempts``, which counts tries on different
        # endpoints (review s30-qa30 Q5: with 2, a resetting endpoint spent both); ``maxAttempts: 1``
        # sends once, no resend (qa24 F2).
        again: Endpoint | None = None
        max_attempts = self.cfg.limits.max_attempts
        resent = sent = 0  # (resent: 1 once the request's one spare resend went out)
        for attempt in range(max_attempts + (max_attempts > 1)):
            if attempt - resent == max_attempts:
                break  # (the spare pass, with no resend to use it)
            try:
                if tried:
                    # A retry goes off the home (``_retry_pick``: not tried), but a stale connection's
                    # resend goes to the same endpoint (``again``): still the home, still pinned
                    # (review s25-rev-prev25 F1: its 429/5xx was retried elsewhere, a 404 there).
                    pinned = pinned and again is not None
                    if deadline is not None and self._loop.time() >= deadline:
                        # No attempt starts with the bound spent (review s18-gw M1): its answer would
                        # come for nobody; the client gets the 504 now.
                        self._blame(suspect)
                        if took:  # an endpoint generated an answer whose body was lost: its prompt
                            self._charge(ireq, None, answered=True)  # (review s18-fixes-c L3)
                        raise GatewayError(
                            504,
                            f"no answer within requestTimeoutSeconds ({self.request_timeout:g}s) after "
                            f"{attempt} attempts; last: {last_error}",
                            code="request_timeout",
                        )
                    try:
                        if again is not None:
                            ep = again
                            resent = 1
                        else:
                            result = self._retry_pick(pool, director, ireq, tried, explain)
                            ep = self._untried(result, tried)
                    except SchedulingError:
                        if took:  # (nowhere left to retry: as at the deadline)
                            self._charge(ireq, None, answered=True)
                        raise
                else:
                    if no_flow:
                        result = director.pick(ireq, explain)
                    else:  # not running while flow control holds it, as the reference (qa32b Q8)
                        if running is not None:
                            self.metrics.stop(running)
                        try:
                            if deadline is None:  # flow control may hold it until capacity frees
                                result = await director.admit(ireq, explain)  # (cancelled if the client goes)
                            else:  # ... up to the request's deadline (review s17-fixes-b L6): a request still
                                # queued then leaves with a 504 ``request_timeout`` (``QueueTimeoutError``),
                                # by the queue's own expiry: no timer per request (review s18-gw L2)
                                result = await director.admit(ireq, explain, deadline - self._loop.time())
                        finally:  # (running again, to its end: ``stop`` in ``handle``)
                            if running is not None:
                                self.metrics.run(running)
                    # (``_untried`` with nothing tried: the first, or its error when there is none)
                    ep = result.endpoints[0] if result.endpoints else self._untried(result, tried)
                    pinned = ireq.subset is not None  # (dropped by the pick if the home left: L4)
            except asyncio.CancelledError:
                # The client left while flow control held the request (the front cancels the handler):
                # counted once, as a client gone after the dispatch below.
                m = self.metrics
                m.error(client_model, ireq.model, "client_gone", m.flow(flow_of(ireq), ireq.priority))
                raise
            except SchedulingError as refused:  # (a name of its own: mypyc types ``e`` by one clause)
                if attempt == 0:
                    raise GatewayError.from_scheduling(refused) from None
                self._blame(suspect)
                raise GatewayError(
                    503, f"all attempts failed; last: {last_error}", code="upstream_unavailable"
                ) from None
            tried.add(ep.address)
            sent = attempt + 1
            if note is not None:
                note.endpoint, note.attempts = self._name(ep), attempt + 1
            on_sent = None
            if marks is not None:  # this attempt's steps replace an earlier attempt's
                marks["picked"] = self.clock()
                for k in ("sent", "head", "first"):
                    marks.pop(k, None)
                on_sent = self._marker(marks, "sent")
            if attempt:
                self.metrics.retries.inc()
            reply_headers = {"x-request-id": rid}
            if (cookie := response_cookie(director, ireq, ep)) is not None:  # (llm-d's session cookie)
                reply_headers["set-cookie"] = cookie
            if explain:
                reply_headers[PICK_HEADER] = self._explain(rid, ep, result)
            director.on_dispatched(ireq, ep)
            # Exactly one on_finished per on_dispatched: set once it has run (or the stream relay
            # owns it); the finally covers cancellation (client gone) and unexpected errors.
            finished = False
            resp: UpstreamResponse | None = None
            preempted = None if no_flow else self._preemptible(director, ireq, ep)
            head = (
                self._request_lines.get((kind, ep.address)) or self._request_line(kind, ep.address)
            ) + header_block
            # Is a timeout at the deadline this endpoint's? Only if it has the larger part of the
            # request's time: what is left now against what the gateway spent (queue, earlier attempts).
            if deadline is not None:
                sent_at = self._loop.time()
                owns_deadline = deadline - sent_at >= sent_at - start
            else:
                sent_at, owns_deadline = 0.0, True
            try:
                try:
                    fresh, again = again is not None, None
                    resp = await self.upstream.request(
                        ep.address, head, out, deadline, tls, on_sent, ireq.stream, False, fresh
                    )
                except ReadTimeout:
                    raise
                except StaleConnection:
                    # Most likely the server closed it while idle as the request went out (it never
                    # read it): not the endpoint's failure, so uncharged; resent to it on a new
                    # connection as the next attempt, counted (``maxAttempts: 1``: none; qa24 F2).
                    last_error = f"{self._name(ep)}: kept-alive connection closed before an answer"
                    finished = True
                    director.on_finished(ireq, ep, None, False)
                    again = ep
                    raise _NextAttempt from None
                except DeadlinePassed:
                    # The bound passed before the request was written (a connect that outlasted it):
                    # nothing sent, so no generation for nobody and no charge to the endpoint; the
                    # client gets the 504 at its bound (review s18-fixes-c M1).
                    finished = True
                    director.on_finished(ireq, ep, None, False)
                    self._blame(suspect)
                    raise GatewayError(
                        504,
                        f"no answer within requestTimeoutSeconds ({self.request_timeout:g}s): it passed "
                        f"before {self._name(ep)} was reached",
                        code="request_timeout",
                    ) from None
                except _UPSTREAM_ERRORS as e:
                    last_error = (
                        f"{self._name(ep)}: {type(e).__name__}"
                        if self.hide
                        else f"{ep.address}: {type(e).__name__}: {e}"
                    )
                    finished = True
                    self._failed(director, ireq, ep)
                    if pinned:  # (its home unreachable: not retried where vLLM can only answer 404, prev26)
                        raise _home_lost(last_error) from None
                    raise _NextAttempt from None
                blame = True
                # (a 429 or a 503, busy or draining, ran nothing: no verdict on the suspect's 500, which
                # waits for the next answer, or is charged when that answer goes back; gw25, review
                # s24-rev-fix24b F5, s25-rev-gw25 F1)
                if suspect is not None and resp.status != 429 and resp.status != 503:
                    if resp.status == 500:
                        # A second endpoint's 500 for the same request: the request's fault, passed
                        # through as it is, neither endpoint charged, not tried a third time.
                        blame = False
                    else:  # answered otherwise here: the suspect's 500 was its own
                        self._blame(suspect)
                    suspect = None
                if pinned and resp.status == 500:
                    # A follow-up's 500 at its home: anywhere else it can only be vLLM's 404 (the response
                    # lives at its home), which would read as "answered otherwise" and charge the home for
                    # a request that may be the culprit (review s18-doors M4): passed through, uncharged.
                    blame = False
                # A 5xx with nowhere else to go is passed through rather than masked. A server's 429
                # (at capacity: it ran nothing) is retried elsewhere (qa24 F1), but not charged: busy is
                # not broken (Envoy's outlier detection counts 5xx and local-origin errors, not 429), or a
                # saturated pool would eject its servers (review s24-rev-fixqa24 R1). Nor is a follow-up's
                # answer at its home, a 429 (R2) or a 502/503/504 (a draining or overloaded vLLM): anywhere
                # else it could only be vLLM's 404 "Response ... not found", misleading; the client gets
                # the home's answer (a 429's or 503's with its Retry-After, ``_pass_back_off``), the home
                # charged as for any last 5xx (s24-rev-fix24b F4, prev25).
                status = resp.status
                if ((status >= 500 and blame) or status == 429) and not (
                    pinned
                    or attempt - resent == max_attempts - 1
                    or not self._left_to_try(pool, director, tried)
                ):
                    last_error = f"{self._name(ep)}: HTTP {resp.status}"
                    finished = True
                    if status == 500 or status == 429:  # (a 500: charged once another answers otherwise)
                        director.on_finished(ireq, ep, None, False)
                        if status == 500:
                            suspect = ep
                    else:  # 502/503/504: the server's state (overload, draining), not the request's
                        self._failed(director, ireq, ep)
                    raise _NextAttempt from None
                if resp.status == 429 or resp.status == 503:
                    _pass_back_off(resp.status, resp.head.headers, reply_headers)
                    if suspect is not None:  # (a 429/503 passed back: nobody else ran it, the 500 stands)
                        self._blame(suspect)
                        suspect = None
                if marks is not None:
                    marks["head"] = self.clock()
                if resp.content_type == "text/event-stream":
                    first = await self._first_chunk(resp)
                    if marks is not None:
                        marks["first"] = self.clock()
                        reply_headers[TIMING_HEADER] = _timing_value(marks)
                    if first is None:
                        last_error = f"{self._name(ep)}: stream ended before its first data event"
                        finished = True
                        self._failed(director, ireq, ep)
                        if pinned:  # (as a connection error at the home)
                            raise _home_lost(last_error)
                        raise _NextAttempt from None
                    finished = True
                    if preempted is not None:  # (a typed stream stays preemptible past its head)
                        preempted.relaying(resp)
                    return await self._relay_stream(
                        request,
                        resp,
                        first,
                        director,
                        ireq,
                        ep,
                        client_model,
                        sent_model,
                        strip_usage,
                        reply_headers,
                        t0,
                        owns_deadline,
                        self._note_response(kind, resp, first, ep, sent_model, client_model, ireq),
                        sent_at,
                        start,
                        kind,
                        preempted,
                    )
                held = 0
                parts: list[bytes] = []
                try:
                    body = resp.read_now()  # (the usual case: all here, no coroutine)
                    if body is None:
                        # Held up to ``whole_max`` (and the process's ``held`` budget); past it, relayed
                        # as it comes (``_relay_whole``). Nothing reached the client yet: a failure
                        # here is retried elsewhere.
                        parts, held, whole = await self._hold(resp)
                        if whole:
                            body = b"".join(parts) if len(parts) != 1 else parts[0]
                            parts.clear()  # (the join replaces them: one copy from here on)
                    if (
                        body is not None
                        and resp.framed_by_close
                        and not whole_json(
                            resp.content_type, body, resp.head.headers.get("content-encoding", "")
                        )
                    ):
                        # Its end was a clean close, which a server dying mid-body sends too: a JSON
                        # body cut short (``whole_json``). Nothing went out: a lost body, as below.
                        self.held.give(held)
                        held = 0
                        raise TruncatedBody(f"{ep.address}: JSON body framed by the close cut short")
                except ReadTimeout:
                    if deadline is not None and self._loop.time() >= deadline:
                        # The request's deadline, not a stall: the 504 below, as for the head, never a
                        # retry with the bound spent (review s18-gw M1: a generation for nobody).
                        raise
                    last_error = f"{self._name(ep)}: body read failed: ReadTimeout"
                    finished = took = True
                    self._failed(director, ireq, ep)
                    raise _NextAttempt from None
                except _UPSTREAM_ERRORS as e:  # (a stall after the head: the answer was done, retried)
                    last_error = f"{self._name(ep)}: body read failed: {type(e).__name__}"
                    finished = took = True
                    self._failed(director, ireq, ep)
                    if pinned:  # (as a connection error at the home; its prompt charged)
                        self._charge(ireq, None, answered=True)
                        raise _home_lost(last_error) from None
                    raise _NextAttempt from None
                finished = True
                if kind == RESPONSES_PATH:  # (``_note_response``'s own test first: one call fewer)
                    self._note_response(
                        kind,
                        resp,
                        body if body is not None else parts[0] if parts else b"",
                        ep,
                        sent_model,
                        client_model,
                        ireq,
                    )
                if marks is not None:
                    marks["first"] = self.clock()  # (the whole body: no earlier byte reaches the client)
                    reply_headers[TIMING_HEADER] = _timing_value(marks)
                if body is None:
                    return await self._relay_whole(
                        request, resp, parts, held, director, ireq, ep, client_model, sent_model,
                        reply_headers, t0, blame, owns_deadline, sent_at, start,
                    )  # fmt: skip
                try:
                    answer = self._whole(
                        resp, body, director, ireq, ep, client_model, sent_model, reply_headers, t0, blame
                    )
                except BaseException:
                    self.held.give(held)
                    raise
                if held:
                    # Given back once the front wrote the body out (or the client left), not now: an
                    # answer a client does not read stays in the budget (review s17-bigbody M3).
                    answer.release = functools.partial(self.held.give, held)
                return answer
            except _NextAttempt:
                pass  # (the ``finally`` below, then the loop's next attempt)
            except ReadTimeout:
                # Sent, and nothing (more) came in time: the server may still be computing it, so it
                # is not run again elsewhere (a retry would double the GPU work, and under overload
                # turn slow answers into more load). The endpoint is charged a failure (review
                # s17-qafix-d F1: a wedged engine whose /health and /metrics still answer holds a
                # non-streamed request to its deadline; uncharged, it was never ejected), as nginx
                # counts a timeout toward max_fails and Envoy's outlier detection counts one: for the
                # idle timeout always (its own time), at the deadline only if it had the larger part of
                # the request's time (``owns_deadline``; review s17-fixes-b L6: not for the gateway's
                # queue), else for the time it had it, summed with its other such timeouts
                # (``HealthTracker.timed_out``; review s18-gw L4: a wedged engine under overload). The
                # client leaving is not charged (below).
                finished = True
                self._charge(ireq, None, answered=True)  # (the server took it: s18-fixes-a L3)
                late = deadline is not None and self._loop.time() >= deadline
                if late and not owns_deadline and deadline is not None:
                    director.on_finished(ireq, ep, None, False)
                    unit = (deadline - start) / 2  # (what it would have had to own the deadline)
                    if self.health.timed_out(ep, sent_at, deadline, unit, self._peers(ep)):
                        self.metrics.ejections.inc()
                else:
                    self._failed(director, ireq, ep)
                # An earlier endpoint's 500 (none came here): its own, as on the 503 path (F5).
                self._blame(suspect)
                if late:
                    why = f"no answer within requestTimeoutSeconds ({self.request_timeout:g}s)"
                else:
                    why = f"no data within idleTimeoutSeconds ({self.cfg.limits.idle_timeout_s:g}s)"
                raise GatewayError(
                    504, f"{self._upstream_name(ep)} timed out: {why}", code="upstream_timeout"
                ) from None
            except asyncio.CancelledError:
                # An earlier endpoint's 500, this one not answered yet: charged, as on the 503 path
                # (review s17-qafix-d F5); only a second 500 clears it.
                self._blame(suspect)
                if preempted is not None and preempted.hit and not finished:
                    # Stopped by flow control for a more important request (its slot is already
                    # released): the upstream connection is aborted below; the client gets a 429.
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    # Counted once, by ``_entry``, under the status the client gets (429, as the
                    # reference's shed requests); kvgate_flow_control_preemptions_total counts the why.
                    raise GatewayError.from_scheduling(preempted_error()) from None
                if not finished:  # (a stream's relay records its own end)
                    m = self.metrics
                    m.error(client_model, ireq.model, "client_gone", m.flow(flow_of(ireq), ireq.priority))
                raise
            finally:
                if not finished:
                    director.on_finished(ireq, ep, None, False)
                    if preempted is None or not preempted.hit:  # (the client left, or an error: its prompt)
                        self._charge(ireq, None, answered=True)
                if resp is not None:
                    resp.release()
        self._blame(suspect)
        if took:  # (as at the deadline above)
            self._charge(ireq, None, answered=True)
        raise GatewayError(
            503,
            f"all {sent} attempts failed; last: {last_error}",
            code="upstream_unavailable",
        )

    def _request_line(self, kind: str, address: str) -> bytes:
        """``POST <path> HTTP/1.1``, CRLF, ``host: <address>``, CRLF: built once per API and endpoint."""
        key = (kind, address)
        line = self._request_lines.get(key)
        if line is None:
            if len(self._request_lines) >= _REQUEST_LINES_MAX:  # (endpoints come and go: bounded)
                self._request_lines.clear()
            path = PATHS.get(kind, kind)  # (an ``OTHER_PATHS`` request: its kind is its path)
            line = self._request_lines[key] = f"POST {path} HTTP/1.1\r\nhost: {address}\r\n".encode()
        return line

    @staticmethod
    def _preemptible(director: Any, ireq: InferenceRequest, ep: Endpoint) -> Stop | None:
        """Let flow control stop this request until its first token (``Director.offers_preemption``
        says which): the ``Stop`` cancels this task (or, once a typed stream's head went out, ends its
        relay: ``gateway.preemption``); its ``hit`` tells a stop apart from the client leaving. None: not
        preemptible."""
        offers = getattr(director, "offers_preemption", None)  # (a multi-cluster pool's director: none)
        if offers is None or not offers(ireq):
            return None
        task = asyncio.current_task()  # only now: a getpid() system call per call on Python 3.11
        if task is None:
            return None
        stop = Stop(task)
        director.preemptible(ireq, ep, stop)
        return stop

    def _marker(self, marks: dict[str, float], key: str) -> Callable[[], None]:
        def mark() -> None:
            marks[key] = self.clock()

        return mark

    def _name(self, ep: Endpoint) -> str:
        """How client-visible messages name an endpoint (``hideInternalAddresses``: not by address)."""
        return "an endpoint" if self.hide else ep.address

    def _upstream_name(self, ep: Endpoint) -> str:
        """The same, as a sentence's subject ("upstream 10.0.0.1:8000" / "an upstream endpoint")."""
        return "an upstream endpoint" if self.hide else f"upstream {ep.address}"

    def _charge(self, ireq: InferenceRequest, usage: Usage | None, answered: bool = False) -> None:
        """``tokensPerMinute``: the answer's usage; where none came though the server took the request (the
        client left, the answer was cut, a server that reports none: ``answered``), the prompt's estimate,
        so a tenant that always leaves before the usage is not free (review s18-qa L6)."""
        if self.limiter is None:
            return
        if usage is not None:
            self.limiter.charge(flow_of(ireq), usage.prompt_tokens + usage.completion_tokens)
        elif answered:
            self.limiter.charge(
                flow_of(ireq), prompt_tokens(ireq.prompt_tokens, ireq.prompt_text, ireq.token_ids)
            )

    def _peers(self, ep: Endpoint) -> tuple[Endpoint, ...]:
        pool = self.pool_by_name.get(ep.pool)
        return pool.endpoints() if pool is not None else ()

    def _failed(self, director: Any, ireq: InferenceRequest, ep: Endpoint) -> None:
        director.on_finished(ireq, ep, None, False)
        if self.health.failure(ep, self._peers(ep)):
            self.metrics.ejections.inc()

    def _charge_cut(
        self,
        ep: Endpoint,
        resp: UpstreamResponse,
        late: bool,
        owns: bool,
        sent_at: float,
        start: float,
        progress: Progress,
    ) -> None:
        """A relayed answer cut (or failed): a failure, or, cut by a deadline ``ep`` did not own
        (``late``, not ``owns``), the time it held the request since ``sent_at`` (half the bound from
        ``start`` a unit), as a head's timeout is charged (review s18-fixes-c L2). Not charged at all when
        the deadline cut it while ``ep`` was still making progress all through the later half of the time
        it held the request (review s19-qa L6: the gateway's bound, not a fault; a long generation must
        not eject a healthy endpoint): ``openai.progress`` (data events, not comments or pings, and no
        long stretch without one, the last one recent: closing-s19). One wedged (after its first token or
        mid-way, pings or not; a first token late; two data events then nothing) is charged as before."""
        due = resp.deadline
        if late and due is not None and progress.steady():
            return
        if late and not owns and due is not None:
            ejected = self.health.timed_out(ep, sent_at, due, (due - start) / 2, self._peers(ep))
        else:
            ejected = self.health.failure(ep, self._peers(ep))
        if ejected:
            self.metrics.ejections.inc()

    def _cut_event(
        self,
        ireq: InferenceRequest,
        ep: Endpoint,
        cut: Exception,
        late: bool,
        resp: UpstreamResponse,
        start: float,
        kind: str,
    ) -> bytes:
        """The error event that ends a stream ``cut`` (logged), in its API's shape (``kind``: on
        ``/v1/messages`` Anthropic's). ``late``: the request's deadline ended it,
        the gateway's own bound, named as the 504 of a request it ends before its answer does (504
        ``request_timeout``; review s19-qa L6: "upstream ... was cut: ReadTimeout" sent a client looking
        for a server fault); else the upstream's cut (502 ``upstream_error``)."""
        if late and resp.deadline is not None:
            bound = round(resp.deadline - start, 3)  # (the bound it was sent with: a reload may change it)
            log.warning(
                "%s: stream from %s cut at requestTimeoutSeconds (%gs)", ireq.request_id, ep.address, bound
            )
            return sse_error_event(
                f"no answer within requestTimeoutSeconds ({bound:g}s): the gateway cut the stream from "
                f"{self._name(ep)} at its bound",
                code="request_timeout",
                status=504,
                path=kind,
            )
        log.warning("%s: stream from %s cut: %s: %s", ireq.request_id, ep.address, type(cut).__name__, cut)
        why = f"upstream stream from {self._name(ep)} was cut: {type(cut).__name__}"
        return sse_error_event(why, path=kind)

    def _deadline_cut(self, cut: Exception, resp: UpstreamResponse) -> bool:
        """Did the request's deadline (not the idle timeout) end this read? (Asked as it ends.)"""
        due = resp.deadline
        return isinstance(cut, ReadTimeout) and due is not None and self._loop.time() >= due

    def _note_response(
        self,
        kind: str,
        resp: UpstreamResponse,
        head: bytes,
        ep: Endpoint,
        sent_model: str | None,
        client_model: str,
        ireq: InferenceRequest,
    ) -> ResponseIdReader | None:
        """A 2xx Responses answer's id remembered with ``ep`` (``_prepare`` picks a follow-up there), read
        from ``head``: the whole held body, else the first piece of a relayed one (vLLM writes ``id``
        first), or a stream's first chunk. A stream whose first chunk does not hold it yet (a long
        ``response.created`` event, or one split across reads: review s18-doors M1): the reader, for
        ``_relay_stream`` to feed the next chunks until it is done."""
        if kind != RESPONSES_PATH or not 200 <= resp.status < 300:
            return None
        sse = resp.content_type == "text/event-stream"
        ids = ResponseIdReader(sse)
        ids.feed(head)
        if ids.done or not sse:
            self._remember_response(ids, ep, sent_model, client_model, ireq)
            return None
        return ids

    def _remember_response(
        self,
        ids: ResponseIdReader,
        ep: Endpoint,
        sent_model: str | None,
        client_model: str,
        ireq: InferenceRequest,
    ) -> None:
        if (rid := ids.response_id()) is not None:
            self.responses.remember(rid, ep.address)
            if sent_model is not None:
                self.response_models.remember(rid, (sent_model, client_model))
            if ireq.conversation is not None:
                ireq.conversation.response_id = rid  # (its turn is kept at its end: ``_keep_turn``)

    def _keep_turn(self, ireq: InferenceRequest, usage: Usage | None, home: str) -> None:
        """A stored Responses turn answered whole (2xx) by ``home``: kept for its follow-up
        (``ResponseTurns``)."""
        conv = ireq.conversation
        if conv is not None and conv.response_id is not None and (turn := finished_turn(ireq, usage, home)):
            self.turns.remember(conv.response_id, turn)

    def _blame(self, ep: Endpoint | None) -> None:
        """Charge ``ep`` (if any) a failure: its 500 for a request no other endpoint answered a 500."""
        if ep is not None and self.health.failure(ep, self._peers(ep)):
            self.metrics.ejections.inc()

    async def _first_chunk(self, resp: UpstreamResponse) -> bytes | None:
        """The stream's bytes up to its first data event; None: it ended or failed before one (retried
        elsewhere). SSE comments (``: ping`` keep-alives) are no progress: held with it (up to 64 KiB,
        ``openai.sse.first_event_held``), so a server that pings and dies before its first event is
        retried too (review s30-qa30 Q4). A ``ReadTimeout`` is raised (not retried: the server may be
        working on it)."""
        held = b""
        try:
            while True:
                chunk = await resp.read_chunk()
                if not chunk:
                    return None
                held = held + chunk if held else chunk
                if first_event_held(held):
                    return held
        except ReadTimeout:
            raise
        except _UPSTREAM_ERRORS:
            return None

    def _explain(self, rid: str, ep: Endpoint, result: Any) -> str:
        doc = orjson.dumps(
            {"endpoint": ep.address, "profile": result.profile, "explanation": result.explanation},
            default=str,
            option=orjson.OPT_NON_STR_KEYS,
        )
        kept = self.picks.put(rid, doc)
        if len(doc) <= _EXPLAIN_HEADER_MAX:
            return doc.decode()
        where = f"/debug/picks/{rid}" if kept else f"not kept: over {self.picks.max_bytes} bytes"
        return orjson.dumps({"endpoint": ep.address, "profile": result.profile, "truncated": where}).decode()

    async def _hold(self, resp: UpstreamResponse) -> tuple[list[bytes], int, bool]:
        """A non-streamed body's pieces as they come, up to ``whole_max`` bytes taken from the
        process's ``held`` budget: ``(pieces, bytes taken, whole)``. Not whole: the next piece would
        pass the bound or the budget; the pieces (that one last, not taken) are the body's start, the
        rest is still to read. The bytes taken are the caller's to give back (on an error: given back
        here)."""
        parts: list[bytes] = []
        held = 0
        budget = self.held
        try:
            while True:
                data = await resp.read_chunk()
                if not data:
                    return parts, held, True
                parts.append(data)
                if held + len(data) > self.whole_max or not budget.take(len(data)):
                    return parts, held, False
                held += len(data)
        except BaseException:
            budget.give(held)
            raise

    async def _relay_whole(
        self,
        request: Request,
        resp: UpstreamResponse,
        parts: list[bytes],
        held: int,
        director: Any,
        ireq: InferenceRequest,
        ep: Endpoint,
        client_model: str,
        sent_model: str | None,
        reply_headers: dict[str, str],
        t0: float,
        blame: bool = True,
        owns_deadline: bool = True,
        sent_at: float = 0.0,
        start: float = 0.0,
    ) -> StreamResponse:
        """A non-streamed answer past ``whole_max`` (or the ``held`` budget): relayed as it arrives
        (chunked to the client, at the client's pace: a write waits while its buffer is full), never
        held whole. Its usage is read as it passes (``BodyUsageScanner``: the first ``usage`` key's
        object, wherever it stands), its model name put back within the first ``whole_max`` bytes
        (``PieceRewriter``). Bytes went out: an upstream cut now is not retried; the client's
        connection is closed mid-body (a JSON body cannot carry an error after its start).
        ``blame=False``: as ``_whole``'s (a 500 not charged). ``owns_deadline``, ``sent_at``, ``start``: as
        ``_relay_stream``'s."""
        headers = reply_headers
        headers["Content-Type"] = resp.head.headers.get("content-type", "application/json")
        cookies = pass_upstream_headers(resp.head.headers, headers)
        rewriter = PieceRewriter(sent_model, client_model, self.whole_max) if sent_model else None
        # Upstream's Content-Length, for an HTTP/1.0 client (which gets no chunks), when the body goes
        # out unchanged in length: no model name put back, or one of the same length.
        length = None
        if rewriter is None or rewriter.same_length:
            with contextlib.suppress(KeyError, ValueError):
                length = int(resp.head.headers["content-length"])
            if length is not None and length < 0:
                length = None
        out = StreamResponse(resp.status, headers, length, cookies)
        scan = BodyUsageScanner()
        ok = False
        sent = 0  # body bytes written to the client (the response size families)
        cut: Exception | None = None
        drained = False  # cut by the drain's deadline (``cut_streams``), as a stream is
        late = False  # cut by the request's deadline (not the idle timeout)
        # Progress for ``_charge_cut``: the held start came just now, then each piece with more than blanks.
        progress = Progress(sent_at, resp.deadline)
        progress.seen(self._loop.time())
        out.waits = progress  # (waiting on the client is no gap: review s20-gw M2)
        director.on_first_token(ireq, ep, learn=False)  # (as ``_whole``: no first token to learn)
        self.streams.add(resp)
        if self._cutting is not None and not resp.received:  # (the drain's cut came before the relay)
            self._cut[resp] = self._cutting
            resp.close()
        try:
            await out.prepare(request)
            parts.reverse()
            while True:
                if parts:
                    chunk = parts.pop()
                    if not parts:  # the held start is out (or in the client's buffer)
                        self.held.give(held)
                        held = 0
                else:
                    try:
                        chunk = await resp.read_chunk()
                    except _UPSTREAM_ERRORS as e:
                        cut, late = e, self._deadline_cut(e, resp)  # (when it came: later writes wait)
                        break
                    if not chunk:
                        break
                    if progress_piece(chunk):
                        progress.seen(self._loop.time())
                scan.feed(chunk)
                data = rewriter.feed(chunk) if rewriter is not None else chunk
                sent += len(data)  # (the bytes the client is sent: a count, no copy)
                await out.write(data)
            # The drain's mark, whatever the read said (a close-framed body's abort reads as its end).
            drained = self._cut.pop(resp, None) is not None
            if drained:
                # The drain's deadline: a JSON body cannot carry an error after its start, so the
                # client's connection is closed mid-body (reset for HTTP/1.0), as for an upstream cut;
                # the gateway's doing: the endpoint is not charged.
                cut = None
                out.abort()
            elif cut is None:
                if rewriter is not None:
                    data = rewriter.finish()
                    sent += len(data)
                    await out.write(data)
                await out.write_eof()
                ok = True
            else:
                log.warning(
                    "%s: body from %s cut: %s: %s", ireq.request_id, ep.address, type(cut).__name__, cut
                )
                out.abort()
        except ConnectionResetError:
            resp.close()  # the client went away: the server stops sending to nobody
        finally:
            self.streams.discard(resp)
            self._cut.pop(resp, None)
            self.held.give(held)
            if drained:
                pass  # (counted as a cut answer below; the endpoint is not blamed)
            elif cut is None and resp.status < 500:
                self.health.success(ep)
            elif blame or cut is not None:
                self._charge_cut(ep, resp, late, owns_deadline, sent_at, start, progress)
            usage = scan.usage() if ok and resp.status < 300 else None
            director.on_finished(ireq, ep, usage, ok and resp.status < 500)
            if ireq.conversation is not None and ok and resp.status < 300:
                self._keep_turn(ireq, usage, ep.address)
            self._charge(ireq, usage, resp.status < 300)
            m = self.metrics
            flow = m.flow(ireq.fairness_id, ireq.priority)  # (``flow_of(ireq)``: ``_entry``'s note)
            relayed = sent  # (the access log's bytes: as relayed, also when the client left; qa35b F2)
            if not ok and cut is None and not drained:
                sent = -1  # the client left (or the handler was cancelled): no size, as a gone stream's
            m.observe(RequestEnd(client_model, ireq.model, self.clock() - t0, usage, sent, -1, flow))
            if self.notes is not None and (note := self.notes.get(id(request))) is not None:
                note.sent = relayed
            if resp.status >= 400:
                m.error(client_model, ireq.model, str(resp.status), flow)
            elif not ok:
                why = "stream_cut" if cut is not None or drained else "client_gone"
                m.error(client_model, ireq.model, why, flow)
        return out

    def _whole(
        self,
        resp: UpstreamResponse,
        body: bytes,
        director: Any,
        ireq: InferenceRequest,
        ep: Endpoint,
        client_model: str,
        sent_model: str | None,
        reply_headers: dict[str, str],
        t0: float,
        blame: bool = True,
    ) -> Response:
        """``blame=False``: a 500 that another endpoint also answered this request, not charged."""
        # (a server's 429 is no success, nor a failure: busy, it ran nothing; review s24-rev-fixqa24 R1)
        busy = resp.status == 429
        ok = resp.status < 500 and not busy
        # The whole body at once: its time is the whole response's, not a first token's (nothing for
        # the latency models to learn; an error reply even less).
        usage = usage_from_body(body) if resp.status < 300 else None
        if ireq.conversation is not None and resp.status < 300:
            self._keep_turn(ireq, usage, ep.address)
        if type(director) is Director:  # (the two calls below in one: ``Director.on_whole``)
            director.on_whole(ireq, ep, usage, ok)
        else:
            director.on_first_token(ireq, ep, learn=False)
            director.on_finished(ireq, ep, usage, ok)
        if self.limiter is not None:
            self._charge(ireq, usage, resp.status < 300)
        if ok:
            self.health.success(ep)
        elif blame and not busy and self.health.failure(ep, self._peers(ep)):
            self.metrics.ejections.inc()
        if sent_model:
            body = BodyRewriter(sent_model, client_model).rewrite(body)
        m = self.metrics
        flow = m.flow(ireq.fairness_id, ireq.priority)  # (``flow_of(ireq)``: ``_entry``'s note)
        # (the response size: the body the client is sent, the model's name put back, as a relay's)
        m.observe(RequestEnd(client_model, ireq.model, self.clock() - t0, usage, len(body), -1, flow))
        if resp.status >= 400:
            m.error(client_model, ireq.model, str(resp.status), flow)
        headers = reply_headers
        headers["Content-Type"] = resp.head.headers.get("content-type", "application/json")
        cookies = pass_upstream_headers(resp.head.headers, headers)
        # (by position: status, body, text, headers, content_type, set_cookies)
        return Response(resp.status, body, None, headers, None, cookies)

    async def _relay_stream(
        self,
        request: Request,
        resp: UpstreamResponse,
        first: bytes,
        director: Any,
        ireq: InferenceRequest,
        ep: Endpoint,
        client_model: str,
        sent_model: str | None,
        strip_usage: bool,
        reply_headers: dict[str, str],
        t0: float,
        owns_deadline: bool = True,
        ids: ResponseIdReader | None = None,
        sent_at: float = 0.0,
        start: float = 0.0,
        kind: str = "",
        stop: Stop | None = None,
    ) -> Response | StreamResponse:
        """``owns_deadline=False``: the endpoint got the request with less than half of its time left (the
        rest spent in the gateway's queue or on other endpoints): a cut at the request's deadline is
        not charged to it as a failure (review s17-fixes-b L6) but for the time it held the request,
        from ``sent_at`` (the request's ``start``: half the bound from it is the unit), as a head's
        timeout is (``HealthTracker.timed_out``; review s18-fixes-c L2). ``ids``: a Responses stream's
        id reader, fed the chunks after ``first`` until it is done (``_note_response``). ``stop``: flow
        control's, while the stream is preemptible (a typed stream until its first output event): a
        preemption aborts ``resp`` and the stream ends with the API's 429 error event."""
        relay = StreamRelay(sent_model, client_model, strip_usage, typed=kind in STREAM_USAGE_PATHS)
        first_s = self.clock() - t0  # (its first byte is here: the TTFT llm-d's families observe)
        sent = 0  # body bytes written to the client (the response size families)
        headers = reply_headers
        headers["Content-Type"] = resp.head.headers.get("content-type", "text/event-stream")
        cookies = pass_upstream_headers(resp.head.headers, headers)
        headers.pop("cache-control", None)  # (the server's, replaced: an event stream is never cached)
        headers["Cache-Control"] = "no-cache"
        out = StreamResponse(resp.status, headers, None, cookies)
        ok = False
        writing = False  # a write to the client pending: the ``[DONE]`` it holds has not reached it
        upstream_ok = True
        drain_cut: bytes | None = None  # (or the preemption's event: the gateway's doing, as the drain's)
        preempted = False
        # A typed stream (Responses API, Anthropic Messages) opens with lifecycle events
        # (``response.created``, ``message_start``) a server may send before its prefill (vLLM's Responses
        # path does): its first token is its first event carrying output, read as ``kvgate epp`` reads it
        # (``openai.sse.has_output``; review s21-qa2 F1: the first byte marked it, a TTFT of ~0 learned).
        # Until then its events are scanned (a few); chat and completions: the first byte, as before.
        first_event: SSEScanner | None = None
        if kind in STREAM_USAGE_PATHS and resp.status < 300:
            first_event = SSEScanner()
        else:
            director.on_first_token(ireq, ep, learn=resp.status < 400)  # (an error event is no first token)
        cut: Exception | None = None
        late = False  # cut by the request's deadline (not the idle timeout)
        got_at = self._loop.time()  # the last chunk from the upstream came then
        gaps = ChunkGaps()  # the gaps between the upstream's chunks (llm-d's inter-token latency)
        # Progress for ``_charge_cut``: when data events went out (read off the relay's whole events:
        # comments, pings and empty data are none; ``openai.progress``). Time the relay waits on the client
        # (its writes held by back-pressure, the upstream not read meanwhile) is no gap (review s20-gw M2).
        progress = Progress(sent_at, resp.deadline)
        out.waits = progress
        self.streams.add(resp)
        if self._cutting is not None and not resp.received:  # (the drain's cut came before its first chunk)
            self._cut[resp] = self._cutting
            resp.close()
        try:
            await out.prepare(request)
            chunk = first
            while chunk:
                gaps.tick(got_at)
                if first_event is not None:
                    first_event.feed(chunk)
                    if first_event.saw_output:
                        first_event = None
                        director.on_first_token(ireq, ep)
                data = relay.feed(chunk)  # (an event past 1 MiB goes out as it comes)
                if data:
                    if progress_events(data) or relay.mid_event:  # (or a piece of an event past 1 MiB)
                        progress.seen(got_at)
                    writing = True
                    await out.write(data)
                    writing = False
                    sent += len(data)  # (a count, no copy; once written: a client gone took none)
                try:
                    chunk = await resp.read_chunk()
                except _UPSTREAM_ERRORS as e:
                    cut, late = e, self._deadline_cut(e, resp)  # (when it came: the error event waits)
                    break
                got_at = self._loop.time()
                if ids is not None and chunk:
                    ids.feed(chunk)
                    if ids.done:
                        self._remember_response(ids, ep, sent_model, client_model, ireq)
                        ids = None
            if stop is not None:
                stop.ended = True  # (past its last read: a preemption now would end nothing)
            # The drain's mark, whatever the read said: a close-framed body's abort reads as its end.
            drain_s = self._cut.pop(resp, None)
            if drain_s is not None:
                drain_cut = proto.drain_cut_event(drain_s, kind)
            elif stop is not None and stop.hit:
                # Preempted after its head went out (``gateway.preemption``): the 429 as an error event.
                preempted = True
                err = preempted_error()
                drain_cut = sse_error_event(err.message, code=err.code, status=err.status, path=kind)
            after_done = relay.done and (drain_cut is not None or cut is not None)
            if after_done:
                # ``[DONE]`` went out before the cut (the drain's or the upstream's): a complete answer,
                # ended as usual (no event after ``[DONE]``; its usage read, counted as a normal end; the
                # endpoint not charged), as ``kvgate serve --clusters`` ends it. The upstream's own cut
                # is still said (DEBUG) and counted (review s17-doors I1).
                if cut is not None and drain_cut is None:
                    self.metrics.cut_after_done.inc()
                    log.debug(
                        "%s: stream from %s cut after its [DONE] (or last event): %s: %s",
                        ireq.request_id, ep.address, type(cut).__name__, cut,
                    )  # fmt: skip
                drain_cut = cut = None
                preempted = False
            if drain_cut is not None:
                # The drain's deadline cut it (``cut_streams``): the gateway's doing, not the upstream's
                # (no health failure); the client is told, as for an upstream cut, by an error event.
                # Mid-event (an event past 1 MiB went out as it came): no event glued onto its half,
                # the connection is closed mid-body instead (the rule before fixdoors16, for this case).
                if relay.mid_event:
                    out.abort()
                else:
                    sent += len(drain_cut)
                    await out.write(drain_cut)
            elif cut is None:
                tail = relay.finish()
                if tail and not after_done:  # (cut after ``[DONE]``: a partial event after it is dropped)
                    sent += len(tail)
                    writing = True  # (its ``[DONE]`` may end in this tail)
                    await out.write(tail)
                    writing = False
                ok = True
            else:
                upstream_ok = False
                event = self._cut_event(ireq, ep, cut, late, resp, start, kind)
                if relay.mid_event:  # (as the drain's cut mid-event: closed mid-body, no event)
                    out.abort()
                else:
                    sent += len(event)
                    await out.write(event)
            await out.write_eof()
        except ConnectionResetError:
            # The client went away: abort the upstream request so the model server stops generating
            # for nobody.
            resp.close()
        finally:
            self.streams.discard(resp)
            self._cut.pop(resp, None)
            if not ok and drain_cut is None and stop is not None and stop.hit:
                # Preempted, its client gone before the relay could tell it (a write raised): the stop's
                # own record decides, as the director has released it (review s23-rev-fixqa23 R6).
                preempted = True
            if drain_cut is not None or preempted:
                upstream_ok = False  # (counted as a cut stream below; the endpoint is not blamed)
            elif upstream_ok:
                self.health.success(ep)
            else:
                self._charge_cut(ep, resp, late, owns_deadline, sent_at, start, progress)
            if not ok and upstream_ok and drain_cut is None and not preempted and relay.done and not writing:
                # Its client left once ``[DONE]`` went out (the openai SDK's ``Stream`` closes at it, the
                # upstream's chunked end perhaps not read yet): it has the whole answer, a normal end as
                # a cut after ``[DONE]`` is (above), its usage read from what came (qa35b F1). Out means
                # its write returned: one that left, or was cut at the send deadline, while the write
                # holding ``[DONE]`` waited never got it (rev-b35 F1).
                relay.finish()
                ok = True
                if self.notes is not None and (note := self.notes.get(id(request))) is not None:
                    note.status = resp.status  # (its line's status: the answer went out whole, not 499)
            # A 2xx's usage only, as ``_whole`` reads it (an error stream that carries one: none).
            usage = relay.usage if resp.status < 300 else None
            director.on_finished(ireq, ep, usage, ok)  # (preempted: released already, a no-op)
            if ireq.conversation is not None and ok and resp.status < 300:
                self._keep_turn(ireq, usage, ep.address)
            if not preempted:  # (as a request preempted before its head: not charged)
                self._charge(ireq, usage, resp.status < 300)
            # Tokens observed only at the stream's normal end: a cut one, or one whose client left,
            # gives none, whether or not its usage event had passed (the transformed relay reads it as
            # it goes by, the pass-through one only at ``finish``), as ``kvgate serve --clusters``.
            m = self.metrics
            flow = m.flow(ireq.fairness_id, ireq.priority)  # (``flow_of(ireq)``: ``_entry``'s note)
            relayed = sent  # (the access log's bytes: as relayed, also when the client left; qa35b F2)
            if not ok and upstream_ok:
                sent = -1  # the client left (or the handler was cancelled): what reached it is not known
            usage = usage if ok else None
            m.observe(
                RequestEnd(client_model, ireq.model, self.clock() - t0, usage, sent, -1, flow, first_s, gaps)
            )
            if self.notes is not None and (note := self.notes.get(id(request))) is not None:
                note.sent = relayed
            if resp.status >= 400:
                # An error status with an event-stream body: under its status, as ``_whole`` counts a
                # JSON one, also when its client leaves or it is cut before its end (the status was
                # sent: the one rule of the three doors).
                m.error(client_model, ireq.model, str(resp.status), flow)
            elif preempted:  # (under the 429 its event says, as one preempted before its head)
                m.error(client_model, ireq.model, "429", flow)
            elif not ok:
                m.error(client_model, ireq.model, "stream_cut" if not upstream_ok else "client_gone", flow)
        return out
