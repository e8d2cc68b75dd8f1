"""The global router: order clusters with a policy, then send the request through each until one starts.

Per cluster, the route is chosen by what is reachable:
1. Endpoint mode (the cluster has an ``epp``): ask its EPP over ext_proc for a pod, send straight to it;
2. Parent mode (the cluster has a ``gateway``): send to the cluster-local gateway, whose EPP picks.
A pod that cannot be reached (no route across clusters, refused, connect timeout) or fails the request
(a 5xx, a stream ended before its first data event: then, with no Parent route, the EPP is asked once more for
another pod; qa30 Q9), or an EPP that fails or stalls (no answer within ``epp_timeout_s``) before the
pick, falls back to Parent mode in the same cluster; a cluster whose every route fails, that answers a 5xx
other than 504, or 429, before any byte (a stream's head is held until its first data event: qa30 Q8; a second
server's 500 is the client's, qa30 Q6), or that sends no response head or first event (within
``head_timeout_s``; in Parent mode also once its aggregate, fresh
when the request was sent, has gone stale with its fetches failing: a hung cluster gateway) is left for
the next cluster in the policy's order (and backs off; a hung one until an aggregate is fetched from it
again). A 504 (a gateway's or pod's timeout: the request may have been written to a model server, which
may still run it) is the client's answer (its body lost too: ``KeptLost``), and the cluster backs off
(qa25 F4), except kvgate's own 504
``request_timeout`` (its queue held the request to its bound: no attempt of it still runs there), which
moves on as a 5xx does (review s25-rev-fixqa25 R4). A request whose response has
started is never retried: it is the client's. With ``limits.requestTimeoutSeconds`` the whole request is
bound (``Deadline``): no cluster is tried, and no head awaited, past it: a 504 ``request_timeout`` when no
attempt may still run at a cluster (a connect unfinished at the bound wrote nothing), else
``upstream_timeout`` (written, no head: as ``kvgate serve``'s for a written request), so that a hub in front
of this one does not send it again (gw26).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import math
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import grpc

from kvgate.aio import stop_to_the_end
from kvgate.httpfront.budget import ByteBudget
from kvgate.multicluster.clusters import REQUEST_TIMEOUT_KEY, ClustersConfig, ClusterSpec, TlsOptions
from kvgate.multicluster.epp_client import EppClient, EppImmediate, EppStalled, EppStream, retry_after_s
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy, Policy, make_policy
from kvgate.multicluster.state import ClusterState, DispatchNote, EppBackoff
from kvgate.openai.framing import whole_json
from kvgate.openai.protocol import DESTINATION_ENDPOINT, RATE_LIMITED
from kvgate.openai.sse import first_event_held
from kvgate.openai.usage import UsageTail
from kvgate.scheduling.types import Usage
from kvgate.sockopts import tcp_keepalive

log = logging.getLogger("kvgate.multicluster.router")

ENDPOINT, PARENT = "endpoint", "parent"
_T = TypeVar("_T")
# Hop-by-hop and length headers are the proxy's own business; a client never steers routing with the
# EPP's destination header (stripped on ingress, and the EPP's own is for this gateway, not the pod).
_DROP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", DESTINATION_ENDPOINT}
)
# The most addresses whose last answer to a probe is kept (``GlobalRouter._live_at``): the latest ones.
LIVE_MAX = 1024
STALLED = "epp stalled"  # an attempt's outcome when the EPP did not answer the pick in time
# A cluster's 504 whose JSON ``error.code`` says no attempt of the request still runs there: ``kvgate
# serve``'s and ``kvgate epp``'s flow-control queue timeout (``QueueTimeoutError``), or its bound passing
# before a model server was reached. Read from a JSON 504 of at most ``ERROR_BODY_MAX`` bytes within
# ``ERROR_BODY_S``.
UNWRITTEN_504 = "request_timeout"
# This hub's own 504 when its bound passed while an attempt's request may still run at a cluster (sent, no
# head yet): ``kvgate serve``'s code for a written request that timed out, so a hub in front of this one
# passes it on instead of sending the request again (a double run; session-25 closing note, gw26).
WRITTEN_504 = "upstream_timeout"
SERVER_500 = "status 500"  # an attempt's outcome when its pod or gateway answered 500
# A send that made no connection (refused, no route, the connect timed out): nothing was written, so the
# EPP's next address may be tried (``GlobalRouter._send``'s ``alternates``).
NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# An Endpoint-mode address the hub could not connect to is tried last in its cluster's walk for this long
# (``GlobalRouter._walk``): the EPP hears only the served address, so it keeps naming one the hub cannot
# reach first, and each request would wait its connect timeout there (rev-g32 F1; as Envoy's Override Host
# policy skips a host its outlier detection ejected). At most ``UNREACHABLE_MAX`` kept, the oldest dropped.
UNREACHABLE_S = 30.0
UNREACHABLE_MAX = 1024
ERROR_BODY_MAX = 16 * 1024
ERROR_BODY_S = 2.0


async def _small_json(resp: aiohttp.ClientResponse, within_s: float = ERROR_BODY_S) -> bytes | None:
    """The body of a JSON answer with a Content-Length of at most ``ERROR_BODY_MAX``, read within
    ``within_s`` (``ERROR_BODY_S`` or what is left of the request's bound, the lesser); None when it is none
    of these (not read: relayed as it comes). A body that fails to come in time is b"" (the head is relayed
    without it, as a cut relay would)."""
    length = resp.content_length
    if length is None or length > ERROR_BODY_MAX or resp.content_type != "application/json":
        return None
    try:
        # (``asyncio.timeout``, not ``wait_for``: on 3.11 that can swallow the client's cancellation,
        # CPython gh-86296; tests/test_stop_cancels.py)
        async with asyncio.timeout(max(0.0, within_s)):
            return await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return b""


def _error_code(body: bytes) -> object:
    """An OpenAI-style error body's ``error.code``; None when it has none."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return err.get("code") if isinstance(err, dict) else None


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    if body:
        yield body


class _Opened:
    """A body whose first bytes were read already (the held head): those, then the rest. Not an async
    generator, which a cancelled read would close: the EPP's fallback reads on after its pump's cancel
    (``EppStream._relay``), as it does from aiohttp's own iterator."""

    __slots__ = ("_first", "_rest")

    def __init__(self, first: bytes, rest: AsyncIterator[bytes]) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> _Opened:
        return self

    async def __anext__(self) -> bytes:
        first, self._first = self._first, None
        return first if first is not None else await self._rest.__anext__()


# An attempt's outcome when its stream ended or failed after the head, before its first data event (no
# byte of it reached the client: qa30 Q8).
FIRST_EVENT_LOST = "stream ended before its first data event"
# A non-streamed answer's body is held whole (up to ``WHOLE_BODY_MAX``, all held bodies of one router together
# up to ``HELD_BODIES_MAX``, ``GlobalRouter.held``: ``kvgate serve``'s bounds, per proxy as there) before its
# head goes on, so one cut before its end (a
# connection lost, a body short of its Content-Length, a JSON body framed by the close that does not parse:
# ``openai.framing``) has given the client nothing and the request moves on (fo31: the twin of qa30 Q8);
# past the bounds it is relayed as it comes, as before. The attempt's outcome then:
BODY_LOST = "body lost before its end"
# What a cluster's EPP is told of its pod's answer lost so (``:status``): ``kvgate serve``'s 502
# ``upstream_error`` for an upstream's cut; its passive health counts it as a 5xx (``extproc.outlier``).
LOST_STATUS = 502
WHOLE_BODY_MAX = 4 << 20
HELD_BODIES_MAX = 64 << 20


def _second_500(attempts: list[Attempt], target: str) -> bool:
    """Whether another server (pod or gateway, not an EPP) answered this request 500 before: a 500 now
    makes it the request's fault (a query of death), as ``kvgate serve`` rules (docs/gateway.md)."""
    return any(a.status == 500 and a.outcome == SERVER_500 and a.target != target for a in attempts)


def _pod_failed(a: Attempt) -> bool:
    """Whether an Endpoint-mode attempt failed at its pod after the pod had the request: it answered a
    5xx (not an EPP's status) or its stream ended before its first data event."""
    return a.mode == ENDPOINT and (
        (a.status >= 500 and a.outcome == f"status {a.status}") or a.outcome in (FIRST_EVENT_LOST, BODY_LOST)
    )


class NoHead(Exception):
    """No response head came from a cluster in time (``GlobalRouter._post``): the attempt failed before
    any byte, so the request moves on; ``outcome`` is the attempt's; ``written``: its request was handed
    to the connection (``_Written``), so it may run there."""

    def __init__(self, outcome: str, written: bool = True) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.written = written


class _Written:
    """One request's mark, set once its connect finished and the request is handed to the connection
    (``_MarkedRequest``), before any byte goes out: unset, nothing can run at the cluster (a connect that
    never finished: review s26-rev-gw26 F2)."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False


# The mark of the request whose task is being made (``GlobalRouter._post``): the task keeps a copy of the
# context, so its ``_MarkedRequest`` finds its own.
_MARK: contextvars.ContextVar[_Written | None] = contextvars.ContextVar("kvgate_hub_write_mark", default=None)


class _MarkedRequest(aiohttp.ClientRequest):
    """aiohttp's request, marking its write (``_Written``): ``send`` runs once the connection is made and
    writes the request. (Not a ``TraceConfig``'s ``on_request_headers_sent``, the same point: a trace
    sends every signal of every request: about 33 us of CPU per request against 5-8 us for this, medians at
    load 7-8, ``scripts/hub_write_mark_cost.py``.)"""

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        mark = _MARK.get()
        if mark is not None:
            mark.written = True
        return await super().send(conn)


@dataclass(frozen=True, slots=True)
class Deadline:
    """A request's whole bound (``limits.requestTimeoutSeconds``), in event-loop time: from ``start`` (its
    body's arrival) to ``due``."""

    start: float
    due: float

    @classmethod
    def after(cls, start: float, bound_s: float) -> Deadline | None:
        """None for no bound (0)."""
        return cls(start, start + bound_s) if bound_s > 0 else None

    @property
    def bound_s(self) -> float:
        return self.due - self.start

    def owned(self, sent_at: float) -> bool:
        """Whether an attempt sent at ``sent_at`` had the larger part of the request's time (what was left
        then against what went before it: earlier attempts, an EPP's pick), as ``kvgate serve`` decides
        whether a timeout at the deadline is the endpoint's."""
        return self.due - sent_at >= sent_at - self.start

    def message(self, what: str) -> str:
        return f"no answer within limits.{REQUEST_TIMEOUT_KEY} ({self.bound_s:g}s): {what}"


class PastDeadline(Exception):
    """The request's bound passed before a cluster's response head came (``GlobalRouter._post``): the
    attempt ends, and no other cluster is tried; ``sent_at``: the attempt's send (loop time; None: it was
    never sent, an EPP's pick outlasted the bound); ``written``: its request was handed to the connection
    (not: its connect never finished), so it may run there."""

    def __init__(self, outcome: str, sent_at: float | None, written: bool = False) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.sent_at = sent_at
        self.written = written


def _release_late(post: asyncio.Future[aiohttp.ClientResponse]) -> None:
    """A head that came after the request gave up on it (the cancel lost the race): its connection closed."""
    if not post.cancelled() and post.exception() is None:
        post.result().close()


@dataclass(slots=True)
class Attempt:
    cluster: str
    mode: str
    target: str
    outcome: str  # "ok", "unreachable", "status NNN", "epp: ...", "epp stalled (pick)"
    status: int = 0  # the HTTP status the cluster refused with (its EPP's or its pod's / gateway's), or 0
    retry_after: int | None = None  # a 429's Retry-After (seconds), when it gave one
    error: bytes | None = None  # a remote EPP's refusal body (its OpenAI-style error), passed on
    running: bool = False  # sent and given up on with no head (``NoHead``): it may still run there


@dataclass(slots=True)
class Routed:
    """A started response: status, headers and a body stream; ``attempts`` says how it got there."""

    status: int
    headers: dict[str, str]
    body: AsyncGenerator[bytes, None]  # iterate it, then ``close()`` the Routed (not just the body)
    cluster: str
    mode: str
    attempts: list[Attempt] = field(default_factory=list)
    epp: EppStream | None = None  # Endpoint mode: the remote EPP's stream, open for the response's life
    settle: Callable[[], Awaitable[None]] | None = None  # idempotent: the upstream, the EPP, the state
    # A 2xx event stream's bounded tail (``kvgate.openai.usage.UsageTail``), fed by the body as it is
    # relayed; its usage event is read once at the end (``usage()``): the cluster's hit or miss
    # classification (``settle``) and the gateway's token metrics both take it from here.
    tail: UsageTail | None = None
    # Aborts the upstream response (its body then raises a connection error): the drain's deadline
    # (``GlobalGateway``); None: nothing to abort.
    abort: Callable[[], None] | None = None
    # The upstream body arrived whole (its end seen, no error), read or not: the drain does not cut it
    # (as ``kvgate serve``'s ``UpstreamResponse.received``); None: unknown (cut as any other).
    received: Callable[[], bool] | None = None
    sent_at: float = 0.0  # the attempt that answered was sent then (event-loop time)
    set_cookies: tuple[str, ...] = ()  # the answer's Set-Cookie lines (not in ``headers``: a line each)
    _usage: Usage | None = field(default=None, init=False, repr=False)
    _read: bool = field(default=False, init=False, repr=False)

    def usage(self) -> Usage | None:
        """The stream's last usage event (None: not an event stream, a non-2xx, or none in its tail).
        Read from the tail once, however often asked."""
        if not self._read:
            self._read = True
            if self.tail is not None:
                self._usage = self.tail.usage()
                self.tail = None
        return self._usage

    async def close(self) -> None:
        """Settle everything the response holds: the upstream connection, the remote EPP's stream, the
        cluster's in-flight count and first-byte wait. Idempotent, and whether or not the body was ever
        iterated: an async generator never started skips its ``finally`` on ``aclose()``, so a request
        cancelled (or failed) between ``route()`` and its first chunk would otherwise leak all three."""
        try:
            await self.body.aclose()  # a started body settles in its ``finally``
        finally:
            if self.settle is not None:
                await self.settle()  # one never started: settled here (a no-op the second time)


class NoRoute(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        attempts: list[Attempt],
        *,
        retry_after: int | None = None,
        error: bytes | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.attempts = status, message, attempts
        # seconds, for a 429's or 503's Retry-After: every 503 the hub makes says when to retry (1 s
        # unless a home cluster gave its own; fo31): no cluster could take it now, one may soon
        if retry_after is None and status == 503:
            retry_after = 1
        self.retry_after = retry_after
        self.error = error  # the refusing EPP's own error body, to pass on as it is
        self.code = code  # the error's ``code`` (``request_timeout``: the request's bound passed)


class DeathLost(NoRoute):
    """A second server's 500 for the request (``_second_500``: its fault, not run a third time, qa30 Q6)
    whose body was lost before its end: the client's answer is that 500, the hub's own body in place of the
    lost one (closing-s31: the request went on to a third cluster). No cluster is charged, as for a second
    500 passed through."""

    def __init__(self, cluster: str, outcome: str, attempts: list[Attempt]) -> None:
        super().__init__(
            500,
            f"cluster {cluster} answered 500, as another server had: the request's own fault (an engine "
            f"error on this input), not run a third time; after its head: {outcome}",
            attempts,
        )


class KeptLost(NoRoute):
    """A head that is the client's answer, never sent elsewhere (a 504 but ``request_timeout``: the request
    may still run there, qa25 F4; a 429 marked rate-limited: the client's own limit, review s18-qa M4),
    whose body was lost before its end: that status with the hub's own body, as ``DeathLost`` (review
    s32-rev-a32 F1: the loss sent it on to the next cluster). A 504 backs the cluster off (``route``), as a
    relayed one does."""

    def __init__(
        self, cluster: str, status: int, outcome: str, attempts: list[Attempt], wait: str | None
    ) -> None:
        said = "its timeout: the request may still run there" if status == 504 else "rate-limited"
        super().__init__(
            status,
            f"cluster {cluster} answered {status} ({said}), not sent elsewhere; after its head: {outcome}",
            attempts,
            retry_after=retry_after_s(wait),  # (a 429's own)
            code=WRITTEN_504 if status == 504 else None,
        )


def _home_said(attempts: list[Attempt], cluster: str) -> NoRoute | None:
    """A follow-up's home cluster answered 429 or a 5xx (its EPP, pod or gateway: busy, draining): that
    status, with a 429's or 503's Retry-After (``_send`` reads no other), as the client's answer
    (``GlobalRouter.route``'s ``pinned``); None: it was not reached (unreachable, stalled, no head) or
    refused otherwise."""
    said = [a for a in attempts if a.cluster == cluster and (a.status == 429 or a.status >= 500)]
    if not said:
        return None
    last = said[-1]
    message = (
        f"cluster {cluster}, which holds the response this follow-up names, answered {last.status}"
        " (busy or draining); a follow-up is not sent to another cluster (its stored response is not"
        " there); retry later"
    )
    wait = last.retry_after if last.retry_after is not None else 1 if last.status == 429 else None
    return NoRoute(last.status, message, attempts, retry_after=wait)


def _listed(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    return ("cluster " if len(unique) == 1 else "clusters ") + ", ".join(unique)


def no_route(attempts: list[Attempt]) -> NoRoute:
    """What the client gets when no cluster started the request. A cluster *refuses* when it (its EPP,
    or its pod / gateway with a 429) answers a 4xx: the request was heard and turned down; any other end
    (unreachable, a 5xx, an EPP that failed or stalled) is a *failure*.
    - any refusal was 429 (shed, at capacity): 429 with ``Retry-After``, the smallest the 429s gave (the
      soonest a cluster expects room; one that gave none counts as 1 s): the fleet is there but busy,
      the client should slow down (a cluster that failed had no capacity to offer either);
    - else, when *every* attempt was a refusal (no failure among them), the first refusal's status (in
      the policy's order: the most preferred cluster that refused), with that EPP's own error body when
      it sent one: 413 when the body is too large everywhere, 400, 404, ...;
    - else 503 (retryable), naming the refusals and failures: a cluster that failed may be the one that
      would take the request (the only one serving the model, the one with the larger body cap), so a
      refusal beside it is not the answer."""
    if not attempts:
        return NoRoute(503, "every cluster failed (no route)", attempts)
    refusals = [a for a in attempts if 400 <= a.status < 500]
    busy = [a for a in refusals if a.status == 429]
    if busy:
        wait = min(1 if a.retry_after is None else a.retry_after for a in busy)
        if len(busy) == len(attempts):
            message = "every cluster is at capacity; retry later"
        else:
            message = f"{_listed([a.cluster for a in busy])} at capacity, no other could take it; retry later"
        return NoRoute(429, message, attempts, retry_after=wait)
    if len(refusals) == len(attempts):
        first = refusals[0]
        message = (
            f"every cluster refused the request ({first.status})"
            if all(a.status == first.status for a in refusals)
            else f"cluster {first.cluster} refused the request ({first.status}); no other could take it"
        )
        return NoRoute(first.status, message, attempts, error=first.error)
    if not refusals:
        return NoRoute(503, f"every cluster failed (last: {attempts[-1].outcome})", attempts)
    said = "; ".join(
        f"cluster {a.cluster} refused ({a.status})" if a in refusals else f"cluster {a.cluster}: {a.outcome}"
        for a in attempts
    )
    return NoRoute(503, f"no cluster could take the request ({said}); retry later", attempts)


class GlobalRouter:
    def __init__(
        self,
        cfg: ClustersConfig,
        policy: str | Policy = "kvgate",
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clusters: int = 3,
        connect_timeout_s: float = 1.0,
        seed: int | None = None,  # the policy's randomness; None: from os.urandom
    ) -> None:
        self.clock = clock
        self.cfg = cfg
        self.policy = (
            make_policy(policy, ttl_s=cfg.ttl_s, local=cfg.local, seed=seed)
            if isinstance(policy, str)
            else policy
        )
        self.states: dict[str, ClusterState] = {}
        self.max_clusters = max_clusters
        self.connect_timeout_s = connect_timeout_s
        # An address (gateway, pod) -> (its cluster, when it last answered a probe: clock), in answer order;
        # an answer stands ``ttl_s``, so older ones go as new ones come, at most ``LIVE_MAX`` are kept, and
        # a reload drops the addresses no cluster holds any more (``_answered``, ``apply``).
        self._live_at: dict[str, tuple[str, float]] = {}
        # (cluster, address) -> when the hub last failed to connect there (clock), oldest first (``_walk``).
        self._unreachable: dict[tuple[str, str], float] = {}
        self._probing: dict[str, asyncio.Future[bool]] = {}
        # Probes started by a bound's cut before a head (``_probe_after_cut``), ended at the close.
        self._cut_probes: set[asyncio.Task[None]] = set()
        self.epp = EppClient(timeout_s=cfg.epp_timeout_s, clock=clock)
        # The bytes of non-streamed bodies this router holds before their heads go on (``_hold``): its own
        # budget, as each ``kvgate serve`` proxy has one (a module's was shared by every hub of a process).
        self.held = ByteBudget(HELD_BODIES_MAX)
        self.apply(cfg)
        # TCP keep-alive (idle s, probe interval s, probes): a request waiting on a cluster whose link is cut
        # gets no ACKs and fails in ~idle + interval x probes (11 s), then moves on as not started, instead
        # of hanging to the read timeout. A slow but live cluster ACKs the probes and is left alone.
        self.keepalive: tuple[int, int, int] = (5, 2, 3)
        self._session: aiohttp.ClientSession | None = None
        self.counts: dict[tuple[str, str], int] = {}  # (cluster, mode) -> started requests
        self.failovers = 0
        self.fallbacks = 0  # Endpoint -> Parent within a cluster
        # (cluster, phase) of each remote EPP that stalled: the pick, or later in the response (some
        # after the client has its response: the EPP's answer to the end of stream).
        self.on_stall: Callable[[str, str], None] | None = None
        # The cluster of each request sent by Parent mode without asking its EPP, which backs off after a
        # stall (``ClusterState.epp``).
        self.on_epp_skip: Callable[[str], None] | None = None
        # The cluster of each address a walk put last, as it could not be connected to lately (``_walk``).
        self.put_last = 0
        self.on_put_last: Callable[[str], None] | None = None

    def apply(self, cfg: ClustersConfig) -> None:
        """A new clusters list (hot reload): keep what is known about clusters that stay."""
        self.cfg = cfg
        self.epp.timeout_s = cfg.epp_timeout_s  # new streams (and each cluster's own, where it sets one)
        old = self.states
        self.states = {}
        for spec in cfg.clusters:
            st = old.get(spec.name) or ClusterState(spec)
            st.respec(spec)
            self.states[spec.name] = st
        for attr, value in (("ttl_s", cfg.ttl_s), ("local", cfg.local)):
            if hasattr(self.policy, attr):
                setattr(self.policy, attr, value)
        # The probes' answers of addresses no cluster holds: a cluster gone, a Parent-only cluster's old
        # gateway (an Endpoint-mode cluster's pods are the EPP's: theirs go with their age).
        held = {s.name: s for s in cfg.clusters}
        for address, (name, _) in list(self._live_at.items()):
            holder = held.get(name)
            if holder is None or (holder.epp is None and address != holder.gateway):
                del self._live_at[address]
        # EPP channels of clusters gone (or whose TLS options changed) close once their streams end.
        self.epp.retain({(s.epp, self._epp_tls(s)) for s in cfg.clusters if s.epp is not None})

    def _epp_tls(self, spec: ClusterSpec) -> TlsOptions | None:
        return self.cfg.tls if spec.epp_tls else None  # the clusters file's CA and client pair

    def state_list(self) -> list[ClusterState]:
        return list(self.states.values())

    async def start(self) -> None:
        # A fresh connection per request: a pooled one into a partitioned cluster would take the request and
        # hang, while a new one fails to connect within ``connect_timeout_s`` and the request moves on.
        connector = aiohttp.TCPConnector(limit=0, force_close=True, socket_factory=self._socket)
        # (its requests mark their write: ``_Written``)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, request_class=_MarkedRequest
        )

    def _socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        tcp_keepalive(sock, *self.keepalive)  # (and data sent but never ACKed: the body into a cut link)
        return sock

    async def close(self) -> None:
        """The EPP channels and the HTTP session closed, to the end also when cancelled meanwhile, the
        cancellation raised after (``stop_to_the_end``: a cancel landing in the channels' close cut it
        and skipped the session's)."""
        await stop_to_the_end(self._close(), "the global router: closing", log)

    async def _close(self) -> None:
        for task in list(self._cut_probes):
            task.cancel()
        if self._cut_probes:
            await asyncio.wait(self._cut_probes)
        try:
            await self.epp.close()
        except BaseException:
            # The session closes however the channels' close ended: an error, a cancel or an interrupt
            # (review s14-final L3: a ``KeyboardInterrupt``/``CancelledError`` there skipped it). The
            # channels' error is the one raised, a second one from the session's close logged (review
            # s14-stops I1: it replaced the first, kept only as its ``__context__``).
            if self._session is not None:
                try:
                    await self._session.close()
                except Exception:
                    log.exception("the global router: closing its HTTP session failed")
            raise
        if self._session is not None:
            await self._session.close()

    def order(self, req: ClusterRequest) -> list[ClusterState]:
        return self.policy.order(self.state_list(), req, self.clock())

    def ready(self) -> bool:
        """Whether ``order`` would name a cluster, without ordering one: no request counted in the
        policy's trace, no random draw, nothing learnt or held (``/readyz``; review s8-mc N1). The
        kvgate policy names every cluster but those with a fresh snapshot and no ready endpoint; the
        others name every cluster."""
        p, states = self.policy, self.state_list()
        if isinstance(p, KvgatePolicy):
            now = self.clock()
            return any(not p.dead(c, now) for c in states)
        return bool(states)

    async def route(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        req: ClusterRequest,
        *,
        home: tuple[str, str | None] | None = None,
        deadline: Deadline | None = None,
        pinned: bool = False,
    ) -> Routed:
        """``home``: (cluster, pod or None), a cluster tried first whatever the policy's order (a
        Responses follow-up goes where the response it names was made), then the order without it; in
        Endpoint mode its EPP is asked for that pod (the subset hint), and asked again without the hint
        if it answers 503 (no such pod); an unknown cluster is ignored. ``pinned`` (a follow-up): the home
        cluster's answer of 429 or 5xx is the client's (``NoRoute`` with its status; elsewhere the
        follow-up could only be vLLM's 404 "Response ... not found": s24-rev-fix24b F4, prev25), and a
        429 or 500 there does not back the cluster off (busy; the request's own fault); one that could not
        be reached is a 503 with ``Retry-After`` (prev26; before, the next cluster's 404).

        ``deadline``: the request's bound (``limits.requestTimeoutSeconds``). No cluster is tried past it,
        and an attempt still without its response head then ends (its EPP's pick too): ``NoRoute`` 504
        ``request_timeout``, never the next cluster (the bound is spent). The cluster it ended at is
        charged (backs off) only if it had the larger part of the request's time (``Deadline.owned``), as
        ``kvgate serve`` charges an endpoint; the relay bounds the answer after its head
        (``GlobalGateway._relay``)."""
        attempts: list[Attempt] = []
        fwd = {k: v for k, v in headers.items() if k.lower() not in _DROP and k.lower() != "content-type"}
        # The body parsed as JSON (``parse_body``): sent as such whatever type the client named, as ``kvgate
        # serve`` sends it (vLLM answers another type 400).
        fwd["content-type"] = "application/json"
        order = self.order(req)
        first = None if home is None else self.states.get(home[0])
        if first is not None:
            order = [first, *(st for st in order if st is not first)]
        order = order[: self.max_clusters]
        pod = None if first is None or home is None else home[1]
        if not order:
            raise NoRoute(503, "no cluster can take the request (none ready)", attempts)
        loop = asyncio.get_running_loop()
        # A cluster that failed with its server's 500, not charged yet (``_second_500``).
        suspect: ClusterState | None = None
        try:
            for i, st in enumerate(order):
                if deadline is not None and loop.time() >= deadline.due:
                    last = attempts[-1] if attempts else None
                    why = "" if last is None else f"; last: cluster {last.cluster}: {last.outcome}"
                    code = WRITTEN_504 if any(a.running for a in attempts) else UNWRITTEN_504
                    raise NoRoute(504, deadline.message(f"it passed after {len(attempts)} attempts{why}"),
                                  attempts, code=code)  # fmt: skip
                if i:
                    self.failovers += 1
                note = req.note(st.name)  # what the policy expected there (ClusterState.dispatched)
                try:
                    routed = await self._try_cluster(
                        st, path, fwd, body, attempts, req.stream, req.model, note, usage=req.usage,
                        pod=pod if st is first else None, deadline=deadline,
                    )  # fmt: skip
                except DeathLost:
                    suspect = None  # (two servers' 500: the request's fault, as when passed through)
                    raise
                except KeptLost as e:
                    if e.status == 504:  # (its timeout, as one relayed)
                        st.failed(self.clock(), "its 504, its answer then lost")
                    raise
                except PastDeadline as e:
                    assert deadline is not None
                    if e.sent_at is not None and deadline.owned(e.sent_at):
                        # (it had the larger part of the time, and sent no head)
                        st.failed(self.clock(), f"cut at limits.{REQUEST_TIMEOUT_KEY}: {e.outcome}")
                    # (sent, no head yet: the cluster may still run it, so not "request_timeout", which
                    # tells a hub in front of this one that nothing runs here; as ``kvgate serve``'s 504
                    # for a written request past its bound)
                    # (an earlier attempt still running counts too: review s26-rev-gw26 F1; a connect
                    # that never finished wrote nothing, as ``kvgate serve`` names it: F2)
                    written = e.written or any(a.running for a in attempts)
                    code = WRITTEN_504 if written else UNWRITTEN_504
                    raise NoRoute(504, deadline.message(f"cluster {st.name}: {e.outcome}"), attempts,
                                  code=code) from None  # fmt: skip
                if routed is not None:
                    if routed.status == 504:  # (its timeout, passed on: not a success there)
                        st.failed(self.clock(), "its 504")
                    elif routed.status == 500:  # (a second server's 500: the request's fault, no one's)
                        suspect = None
                    else:
                        st.succeeded()
                    return routed
                said = _home_said(attempts, st.name) if pinned and st is first else None
                if said is None or said.status not in (429, 500):
                    # (a follow-up's home busy (429) or its own 500 is not the cluster broken: not
                    # charged, as ``kvgate serve`` does; review s25-rev-fixprev25 R1)
                    if suspect is None and attempts and attempts[-1].outcome == SERVER_500:
                        # Its 500 may be the request's fault: charged once the request ends otherwise, not
                        # if a second server answers it 500 too (qa30 Q6, as ``kvgate serve``'s rule).
                        suspect = st
                    else:
                        st.failed(self.clock(), attempts[-1].outcome if attempts else "")
                if said is not None:
                    raise said
                if pinned and st is first:
                    if any(a.status for a in attempts):  # (refused there, a 4xx: its own answer)
                        raise no_route(attempts)
                    # Not reached (unreachable, stalled, no head): nowhere else holds the response; the
                    # next cluster could only answer vLLM's 404 (prev26). 503, to retry once it is back.
                    why = attempts[-1].outcome if attempts else "not reached"
                    raise NoRoute(
                        503,
                        f"cluster {st.name}, which holds the response this follow-up names, could not be"
                        f" reached ({why}); a follow-up is not sent to another cluster (its stored response"
                        " is not there); retry later",
                        attempts,
                        retry_after=1,
                        code="upstream_unavailable",
                    )
            raise no_route(attempts)
        finally:
            if suspect is not None:
                suspect.failed(self.clock(), SERVER_500)

    async def _try_cluster(
        self,
        st: ClusterState,
        path: str,
        fwd: dict[str, str],
        body: bytes,
        attempts: list[Attempt],
        stream: bool = False,
        model: str | None = None,
        note: DispatchNote | None = None,
        usage: bool = False,
        pod: str | None = None,
        deadline: Deadline | None = None,
    ) -> Routed | None:
        """``pod``: in Endpoint mode, the pod the EPP is asked for (the subset hint; asked again for any
        pod if it answers 503: no such pod). ``deadline``: raises ``PastDeadline`` when it passes first."""
        spec = st.spec
        # A streamed request's TTFT at this cluster runs from here (the EPP's pick included).
        started = self.clock() if stream else None
        # An EPP backing off after a stall is not asked while the cluster has a Parent route (the fallback a
        # stall would take, at once: qa27 Q7); after its window one request asks it again.
        trial = False  # (this request asks it after its window: the one trial)
        gate = st.epp
        if spec.epp is not None and spec.gateway is not None:
            trial = bool(st.epp.backoff_s)
            if not st.epp.may_ask(self.clock()):
                if self.on_epp_skip is not None:
                    self.on_epp_skip(st.name)
                return await self._send(
                    st, PARENT, spec.gateway, path, fwd, body, attempts, None, started, note, usage, deadline
                )
        if spec.epp is not None:
            # (the pick bounded by the request's deadline too: cancelled there, its stream closed)
            timer = asyncio.timeout_at(None if deadline is None else deadline.due)
            try:
                tls = self._epp_tls(spec)
                on_stall = functools.partial(self._epp_stalled, st, gate, self.clock())
                async with timer:
                    pick: EppStream | None = await self.epp.open(
                        spec.epp, path, fwd, body, tls=tls, timeout_s=spec.epp_timeout_s, on_stall=on_stall,
                        subset=None if pod is None else (pod,),
                    )  # fmt: skip
                    if pod is not None and pick is not None and pick.address is None and pick.status == 503:
                        # (no such pod any more: the EPP's 503 for an empty subset) any pod, as any request
                        pick = await self.epp.open(
                            spec.epp, path, fwd, body, tls=tls, timeout_s=spec.epp_timeout_s,
                            on_stall=on_stall,
                        )  # fmt: skip
            except EppStalled as e:  # no answer in time: as a failed pick (counted by ``on_stall``)
                attempts.append(Attempt(st.name, ENDPOINT, spec.epp, f"{STALLED} ({e.phase})"))
                pick = None
            except (grpc.aio.AioRpcError, TimeoutError, OSError) as e:  # (OSError: an unreadable cert file)
                if timer.expired():  # the request's bound, not the EPP's failure: nowhere else to go
                    outcome = "the bound passed during its EPP's pick"
                    attempts.append(Attempt(st.name, ENDPOINT, spec.epp, outcome))
                    raise PastDeadline(outcome, None) from None
                attempts.append(Attempt(st.name, ENDPOINT, spec.epp, f"epp: {type(e).__name__}"))
                pick = None
            finally:
                if trial:  # (answered, stalled, failed or cancelled: the next window's request may ask)
                    gate.trial_over()
            if pick is not None and st.epp.answered():
                log.info("cluster %s: its EPP %s answers again: Endpoint mode back", st.name, spec.epp)
            if pick is not None and pick.address is not None:
                pick.client_model = model or None  # put back by the gateway should the EPP fail mid-way
                # The pod gets what Envoy would send it: the EPP's header mutation and body.
                to_pod = pick.request_mutation.apply(fwd, drop=_DROP)
                before = len(attempts)
                routed = await self._send(
                    st, ENDPOINT, pick.address, path, to_pod, pick.body, attempts, pick, started, note, usage,
                    deadline, pick.alternates,
                )  # fmt: skip
                if routed is not None:
                    return routed
                if pod is not None and pick.address == pod and attempts[-1].status:
                    # A follow-up's home pod answered (429, 5xx: busy, draining): the cluster's gateway
                    # keeps no ids in Endpoint mode and would place it on a pod without its stored
                    # response (a 404); ``route``'s ``_home_said`` gives the client the pod's answer
                    # (review s25-rev-prev25 F2). An unreachable pod still falls back.
                    return None
                if spec.gateway is None and pod is None and _pod_failed(attempts[-1]):
                    # One pod's failure is not yet the cluster's (qa30 Q9): another pod first, as the
                    # Parent route (its gateway retries another endpoint) would.
                    # (every address the walk tried is left out: one it could not connect to would cost
                    # the connect timeout again, rev-g32 F3)
                    tried = frozenset(a.target for a in attempts[before:])
                    return await self._other_pod(
                        st, attempts[-1].target, tried, path, fwd, body, attempts, gate, stream, model, note,
                        usage, deadline,
                    )  # fmt: skip
                if spec.gateway is not None:
                    self.fallbacks += 1
                    # The Parent attempt's TTFT runs from its own send: the failed pod attempt's
                    # time (a connect timeout, a slow 5xx) is not the cluster's TTFT.
                    started = self.clock() if stream else None
            elif pick is not None:
                # The EPP refused (no capacity, model not served there, ...): the next cluster may serve it.
                status = pick.status or 0
                attempts.append(Attempt(st.name, ENDPOINT, spec.epp, f"epp status {pick.status}", status,
                                        pick.retry_after, pick.error))  # fmt: skip
                return None
        if spec.gateway is not None:
            return await self._send(
                st, PARENT, spec.gateway, path, fwd, body, attempts, None, started, note, usage, deadline
            )
        return None

    async def _other_pod(
        self,
        st: ClusterState,
        failed: str,
        tried: frozenset[str],
        path: str,
        fwd: dict[str, str],
        body: bytes,
        attempts: list[Attempt],
        gate: EppBackoff,
        stream: bool,
        model: str | None,
        note: DispatchNote | None,
        usage: bool,
        deadline: Deadline | None,
    ) -> Routed | None:
        """The cluster's EPP asked once more after its pod ``failed`` the request (``_pod_failed``), and
        the request sent to the pod it names; None (the cluster failed, the pod's failure its outcome)
        when it names that pod again, refuses, fails or stalls, or the request's bound passes first.
        ``tried``: every address the request's walk tried there, left out of the new list (None when
        nothing is left)."""
        spec = st.spec
        assert spec.epp is not None
        started = self.clock() if stream else None
        on_stall = functools.partial(self._epp_stalled, st, gate, self.clock())
        try:
            async with asyncio.timeout_at(None if deadline is None else deadline.due):
                pick = await self.epp.open(
                    spec.epp, path, fwd, body, tls=self._epp_tls(spec), timeout_s=spec.epp_timeout_s,
                    on_stall=on_stall,
                )  # fmt: skip
        except (EppStalled, grpc.aio.AioRpcError, TimeoutError, OSError):
            return None
        left = [] if pick.address is None else [a for a in (pick.address, *pick.alternates) if a not in tried]
        if pick.address is None or pick.address == failed or not left:
            pick.cancel()  # (its session closes the request: nothing was sent)
            return None
        pick.client_model = model or None
        to_pod = pick.request_mutation.apply(fwd, drop=_DROP)
        return await self._send(
            st, ENDPOINT, left[0], path, to_pod, pick.body, attempts, pick, started, note, usage, deadline,
            tuple(left[1:]),
        )  # fmt: skip

    def _epp_stalled(self, st: ClusterState, gate: EppBackoff, asked_at: float, phase: str) -> None:
        """A stream asked of ``st``'s EPP at ``asked_at`` found it stalled in ``phase`` (``EppStream``'s
        ``on_stall``): counted, and Endpoint mode backs off there (``ClusterState.epp``)."""
        if (
            gate is st.epp
            and st.spec.gateway is not None
            and gate.stalled(self.clock(), asked_at, st.healthy)
        ):
            # (only the state the stream was asked under, while still the cluster's: a reload's new EPP is
            # not charged for the old one's stall; no Parent route: still asked, so no back-off; review
            # s27-rev-fixes27b F1, F2)
            log.warning("cluster %s: its EPP %s did not answer within epp_timeout_s (%s): Endpoint mode "
                        "backs off %gs (requests go by Parent mode)", st.name, st.spec.epp, phase,
                        st.epp.backoff_s)  # fmt: skip
        if self.on_stall is not None:
            self.on_stall(st.name, phase)

    async def _post(
        self,
        st: ClusterState,
        mode: str,
        url: str,
        body: bytes | None,
        fwd: dict[str, str],
        client_timeout: aiohttp.ClientTimeout,
        stream: bool,
        method: str = "POST",
        deadline: Deadline | None = None,
    ) -> aiohttp.ClientResponse:
        """The request sent, its response head awaited. A hung cluster (a wedged event loop, a stopped
        process: the kernel still ACKs, so TCP keep-alive does not tell it from a slow one) would hold the
        request to the read timeout, so (review s19-qa M3, s19-fixes-b M1, M2):

        - a **stream**'s head is awaited at most ``head_timeout_s`` (``NoHead``), as ``kvgate serve`` bounds
          a stream's head by idleTimeoutSeconds;
        - a **non-streamed** answer's head comes with the whole answer (a long generation), so
          ``head_timeout_s`` does not cut it: past it, the cluster's gateway itself is probed (``_live``);
        - in Parent mode, while the cluster's aggregate is stale (older than ``ttl_s``) with its fetches
          failing (checked every half ``ttl_s``), the gateway is probed too: the aggregate is often another
          process's (the cluster EPP's), so its outage alone tells nothing of the gateway.

        A gateway that answers no probe within ``probe_timeout_s`` (the clusters file's) is hung: the
        attempt fails before any byte (the request moves to the next cluster) and, in Parent mode, the
        cluster is marked (``ClusterState.hung_at``, with an aggregate fetched before) until an aggregate
        is fetched from it again or a request succeeds there; other requests waiting there leave then. A
        gateway that answers (any status) is waited for: a non-streamed answer to the read timeout
        (``sock_read``) or the request's bound, whichever comes first.
        (``method``: a Responses lookup's ``GET``, ``multicluster.lookups``, is bounded alike.)

        ``deadline`` (the request's bound, ``limits.requestTimeoutSeconds``): nothing is sent past it, and
        no head awaited (``PastDeadline``), whatever the probe said: a gateway that answers its probe but
        never the request is held to the bound, not to the read timeout."""
        assert self._session is not None
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        if deadline is not None and sent_at >= deadline.due:
            raise PastDeadline("the bound passed before it was sent", None)
        mark = _Written()
        held = _MARK.set(mark)  # (the task's context is a copy of this one: its request finds this mark)
        try:
            post = asyncio.ensure_future(
                self._session.request(method, url, data=body, headers=fwd, timeout=client_timeout)
            )
        finally:
            _MARK.reset(held)
        cfg = self.cfg
        watch = mode == PARENT and st.spec.aggregate is not None and st.fetched_at is not None
        bound = sent_at + cfg.head_timeout_s
        step = cfg.ttl_s / 2 if watch else cfg.head_timeout_s
        probe: asyncio.Future[bool] | None = None
        try:
            while True:
                now = loop.time()
                if deadline is not None and now >= deadline.due:
                    if mode == PARENT and (probe is None or not probe.done()):
                        self._probe_after_cut(st, url)  # (s20-mc L4: the cut is the evidence)
                    raise PastDeadline("no response head by then", sent_at, mark.written)
                if stream and now >= bound:
                    raise NoHead(
                        f"no response head within head_timeout_s ({cfg.head_timeout_s:g}s)", mark.written
                    )
                wait = min(step, bound - now) if stream or now < bound else step
                if deadline is not None:
                    wait = min(wait, deadline.due - now)
                done, _ = await asyncio.wait((post,), timeout=wait)
                if done:
                    return post.result()
                if deadline is not None and loop.time() >= deadline.due:
                    continue  # (the bound: above)
                if mode == PARENT and st.hung_at is not None and st.hung_at == st.fetched_at:
                    raise NoHead("hung: its gateway answered no probe, and no aggregate since", mark.written)
                if (not stream and loop.time() >= bound) or (watch and self._hung(st)):
                    probe = asyncio.ensure_future(self._live(url, st.name))
                    both: tuple[asyncio.Future[Any], ...] = (post, probe)
                    left = None if deadline is None else max(0.0, deadline.due - loop.time())
                    await asyncio.wait(both, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    if post.done():
                        return post.result()
                    if not probe.done():
                        continue  # the bound passed first (above)
                    if not probe.result():
                        if mode == PARENT and st.fetched_at is not None:
                            st.hung_at = st.fetched_at  # (a pod that hangs is not its cluster)
                        t = cfg.probe_timeout_s
                        raise NoHead(
                            f"hung: no response head, and its gateway answered no probe within {t:g}s",
                            mark.written,
                        )
        finally:
            if probe is not None and not probe.done():
                probe.cancel()  # (the shared probe itself is shielded)
            if not post.done():
                post.cancel()
                post.add_done_callback(_release_late)

    async def _first_event(
        self, resp: aiohttp.ClientResponse, sent_at: float, deadline: Deadline | None
    ) -> bytes | str | None:
        """A stream's bytes up to its first data event (SSE comments before it are no progress:
        ``openai.sse.first_event_held``, ``kvgate serve``'s rule), awaited to ``head_timeout_s`` from the
        send (the head and the first event together, as a ``kvgate serve`` cluster gateway's held head
        comes) and the request's bound; else the attempt's outcome: ``FIRST_EVENT_LOST`` (it ended or
        failed first) or the timeout (it may still run there); None: more bytes came, then a cut that
        hid them (the body raises it). ``PastDeadline`` when the bound passed first."""
        loop = asyncio.get_running_loop()
        bound = sent_at + self.cfg.head_timeout_s
        due = bound if deadline is None else min(bound, deadline.due)
        held = b""
        try:
            async with asyncio.timeout_at(due):
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        return FIRST_EVENT_LOST
                    held = held + chunk if held else chunk
                    if first_event_held(held):
                        return held
        except TimeoutError:
            if deadline is not None and loop.time() >= deadline.due:
                raise PastDeadline("no first data event by then", sent_at, True) from None
            return f"no first data event within head_timeout_s ({self.cfg.head_timeout_s:g}s)"
        except (aiohttp.ClientError, OSError):
            # (aiohttp raises a cut before the bytes it holds: any unseen may hold an event, so the
            # stream had started, the cluster ran it: its cut is the client's, relayed as one)
            return None if resp.content.total_bytes > len(held) else FIRST_EVENT_LOST

    async def _hold(
        self, resp: aiohttp.ClientResponse, sent_at: float, deadline: Deadline | None
    ) -> tuple[bytes, int, bool] | None:
        """A non-streamed body held before its head goes on (``BODY_LOST``'s note): ``(its start, bytes
        taken from ``self.held``, whole)``, not whole when the next piece would pass ``WHOLE_BODY_MAX`` or the
        budget (that piece is the start's last, not taken; the rest is read as it comes); None: it was
        cut before its end. ``PastDeadline`` when the request's bound passed first."""
        loop = asyncio.get_running_loop()
        parts: list[bytes] = []
        held = 0
        try:
            async with asyncio.timeout_at(None if deadline is None else deadline.due):
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    parts.append(chunk)
                    if held + len(chunk) > WHOLE_BODY_MAX or not self.held.take(len(chunk)):
                        return b"".join(parts), held, False
                    held += len(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.held.give(held)
            if deadline is not None and loop.time() >= deadline.due:
                raise PastDeadline("its body not whole by then", sent_at, True) from None
            return None  # (a cut, a body short of its length, aiohttp's read timeout)
        except BaseException:
            self.held.give(held)
            raise
        body = b"".join(parts)
        framed_by_close = (
            resp.content_length is None and "chunked" not in resp.headers.get("Transfer-Encoding", "").lower()
        )
        if framed_by_close and not whole_json(
            resp.content_type, body, resp.headers.get("Content-Encoding", "")
        ):
            self.held.give(held)
            return None
        return body, held, True

    def _probe_after_cut(self, st: ClusterState, url: str) -> None:
        """The request's bound cut an attempt before its head, its gateway not probed in it: the cut is
        the evidence a probe needs (review s20-mc L4: with ``requestTimeoutSeconds`` below
        ``head_timeout_s``, a non-streamed request without an aggregate to watch never reached the probe,
        so a hung gateway was never found; one sent late, not charged, kept taking requests). The probe
        runs after the 504 (the client does not wait for it), shared with any other of that address
        (``_live``); a gateway that answers none within ``probe_timeout_s`` is hung, as in ``_post``:
        marked (with an aggregate fetched before) and backed off, unless backing off already (the cut
        charged it)."""

        async def check() -> None:
            if await self._live(url, st.name) or self.states.get(st.name) is not st:
                return
            if st.fetched_at is not None:
                st.hung_at = st.fetched_at
            now = self.clock()
            log.info("cluster %s: cut at limits.%s before its head, and its gateway answered no probe "
                     "within %gs: hung", st.name, REQUEST_TIMEOUT_KEY, self.cfg.probe_timeout_s)  # fmt: skip
            why = "hung: cut before its head, and its gateway answered no probe"
            if now >= st.down_until:
                st.failed(now, why)
            st.found_hung(now, why)  # (the cut charged it, the probe came inside its back-off: said here)

        task = asyncio.ensure_future(check())
        self._cut_probes.add(task)
        task.add_done_callback(self._cut_probes.discard)

    async def _live(self, url: str, cluster: str) -> bool:
        """Whether the gateway (or pod) at ``url``'s host, of ``cluster``, answers a ``GET /healthz`` (any
        status, its head) within ``probe_timeout_s``. One probe an address at a time (the requests waiting
        there share it), and an answer stands for ``ttl_s``."""
        target = url.split("/", 3)[2]
        seen = self._live_at.get(target)
        if seen is not None and self.clock() - seen[1] < self.cfg.ttl_s:
            return True
        task = self._probing.get(target)
        if task is None or task.done():
            task = self._probing[target] = asyncio.ensure_future(self._probe(target, cluster))
        return await asyncio.shield(task)

    def _answered(self, target: str, cluster: str) -> None:
        """``target`` answered a probe now: its record moved to the new end; the old end's records past
        ``ttl_s`` (they stand for nothing any more) and past ``LIVE_MAX`` dropped."""
        live = self._live_at
        now = self.clock()
        live.pop(target, None)
        live[target] = (cluster, now)
        ttl = self.cfg.ttl_s
        while live:
            first = next(iter(live))
            if len(live) <= LIVE_MAX and now - live[first][1] < ttl:
                break
            del live[first]

    async def _probe(self, target: str, cluster: str) -> bool:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.cfg.probe_timeout_s)
        try:
            async with self._session.get(f"http://{target}/healthz", timeout=timeout):
                pass  # its head came: the process answers (the connection is not kept)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False
        finally:
            self._probing.pop(target, None)
        self._answered(target, cluster)
        return True

    def _hung(self, st: ClusterState) -> bool:
        """The cluster's aggregate stale (older than ``ttl_s``) with its last fetch failed."""
        at = st.fetched_at
        return st.fetch_error is not None and at is not None and self.clock() - at > self.cfg.ttl_s

    def _walk(self, cluster: str, walk: tuple[str, ...]) -> tuple[str, ...]:
        """An EPP's list for ``cluster`` in the order it is tried: the addresses the hub failed to connect
        to within ``UNREACHABLE_S`` after the others (each such one counted), in the EPP's order."""
        if len(walk) < 2 or not self._unreachable:
            return walk
        now = self.clock()
        seen = self._unreachable
        late = tuple(a for a in walk if now - seen.get((cluster, a), -math.inf) < UNREACHABLE_S)
        if not late or len(late) == len(walk):
            return walk
        self.put_last += len(late)
        if self.on_put_last is not None:
            for _ in late:
                self.on_put_last(cluster)
        return (*(a for a in walk if a not in late), *late)

    def _not_connected(self, cluster: str, address: str) -> None:
        """The hub failed to connect to ``address`` of ``cluster`` now: kept (``_walk``), the records past
        ``UNREACHABLE_S`` and past ``UNREACHABLE_MAX`` dropped from the oldest."""
        seen = self._unreachable
        now = self.clock()
        seen.pop((cluster, address), None)
        seen[(cluster, address)] = now
        while seen:
            first = next(iter(seen))
            if len(seen) <= UNREACHABLE_MAX and now - seen[first] < UNREACHABLE_S:
                break
            del seen[first]

    async def _send(
        self,
        st: ClusterState,
        mode: str,
        target: str,
        path: str,
        fwd: dict[str, str],
        body: bytes,
        attempts: list[Attempt],
        epp: EppStream | None = None,
        started: float | None = None,
        note: DispatchNote | None = None,
        usage: bool = False,
        deadline: Deadline | None = None,
        alternates: tuple[str, ...] = (),
    ) -> Routed | None:
        """``target``'s answer, once it has started (``Routed``), or None (recorded in ``attempts``).
        ``alternates``: Endpoint mode, the EPP's fallback addresses after ``target``, tried in its order
        while none can be connected to."""
        assert self._session is not None, "start() first"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s, sock_read=300)
        # Streamed: the request waits for its first byte in the cluster's state (censored TTFT evidence).
        # (usage: a streamed answer's usage event, when the client asked for one, says whether it hit.)
        usage = usage and started is not None
        token = st.dispatched(started, note=note, usage=usage)
        held = 0  # (bytes of a held body taken from ``self.held``: given back when the answer settles)

        def given_up() -> None:
            nonlocal held
            self.held.give(held)
            held = 0
            st.finished(token)
            if epp is not None:
                epp.cancel()  # the EPP's session closes the request as failed

        loop = asyncio.get_running_loop()
        walk = self._walk(st.name, (target, *alternates))
        first_sent = loop.time()  # (the cluster's charge: its walk had the request from here, rev-g32 F2)
        try:
            for i, target in enumerate(walk):
                sent_at = loop.time()
                try:
                    resp = await self._post(st, mode, f"http://{target}{path}", body, fwd, timeout,
                                            started is not None, deadline=deadline)  # fmt: skip
                    if mode == ENDPOINT:
                        self._unreachable.pop((st.name, target), None)
                    break
                except PastDeadline as e:
                    if i:  # (a walk the bound ended: the cluster had the time since its first address)
                        e.sent_at = first_sent
                    raise
                except NOT_CONNECTED as e:
                    if mode == ENDPOINT:
                        self._not_connected(st.name, target)
                    if i + 1 == len(walk):
                        raise
                    # No connection, nothing sent: the EPP's next address, as a gateway with a retry walks
                    # its list (Envoy's Override Host policy on a connect failure); the EPP hears the one
                    # that answers as the served endpoint and moves its accounting there.
                    attempts.append(Attempt(st.name, mode, target, f"unreachable: {type(e).__name__}"))
        except PastDeadline as e:
            given_up()
            attempts.append(Attempt(st.name, mode, target, e.outcome))
            raise
        except NoHead as e:
            given_up()
            attempts.append(Attempt(st.name, mode, target, e.outcome, running=e.written))
            return None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            given_up()
            attempts.append(Attempt(st.name, mode, target, f"unreachable: {type(e).__name__}"))
            return None
        except BaseException:
            given_up()
            raise
        # A 504 is a gateway's (or pod's) timeout, most often after it wrote the request to a model server
        # and waited (``kvgate serve``'s ``upstream_timeout``; Envoy's "upstream request timeout"), which
        # may still be running it. Sent elsewhere it would run twice, and under overload every timed-out
        # request would be prefilled again in the next cluster: as ``kvgate serve`` never retries a
        # written request that timed out, such a 504 is the client's answer (qa25 F4); the cluster is
        # charged (``route``). Only kvgate's own ``request_timeout`` 504 (nothing written: its queue held
        # the request to its bound) moves on, as any 5xx (review s25-rev-fixqa25 R4).
        relayed: bytes | None = None
        unwritten = False
        if resp.status == 504:
            # (guarded as the send is: a client that leaves during the read must not leave the cluster's
            # in-flight count, the response or the EPP's session behind: review s25-rev-fixes25 F1; the
            # read bounded by the request's deadline too, F2)
            within = ERROR_BODY_S
            if deadline is not None:
                within = min(within, deadline.due - asyncio.get_running_loop().time())
            try:
                relayed = await _small_json(resp, within)
            except BaseException:
                resp.release()
                given_up()
                raise
            unwritten = relayed is not None and _error_code(relayed) == UNWRITTEN_504
        # A second server's 500 for this request (a query of death: an engine error on that input) is
        # passed through as it came, as ``kvgate serve`` does (qa30 Q6): not run a third time.
        death = resp.status == 500 and _second_500(attempts, target)
        # A head that is the client's answer whatever follows it (the branch below lets these through):
        # its body lost ends the request (``KeptLost``), as a second 500's does.
        kept = (resp.status == 504 and not unwritten) or (resp.status == 429 and RATE_LIMITED in resp.headers)

        async def told(status: int) -> None:
            """``status`` told to the pod's EPP (Endpoint mode) as its response headers' ``:status``, before
            the attempt's cancel, as Envoy passes an EPP the response headers, so its passive health charges
            the pod (``extproc.outlier``; closing-s30: the cancel alone told it nothing and a failing pod was
            never ejected there). Bounded by the EPP's ``epp_timeout_s``; an EPP that fails here is left
            alone (``response_headers``); a cancel meanwhile gives the attempt up."""
            if epp is None:
                return
            pod_headers = {k.lower(): v for k, v in resp.headers.items()}
            try:
                with contextlib.suppress(EppImmediate):
                    await epp.response_headers(status, pod_headers, target)
            except BaseException:
                resp.close()
                given_up()
                raise

        if unwritten or (resp.status != 504 and not death and (
            resp.status >= 500 or (resp.status == 429 and RATE_LIMITED not in resp.headers)
        )):  # fmt: skip
            # Nothing reached the client yet: free to go elsewhere. (A 429 marked rate-limited is the
            # client's own limit, a tenant's, not the cluster at capacity: passed on as any 4xx refusal,
            # the cluster not backed off for everyone: review s18-qa M4.)
            if resp.status >= 500:
                await told(resp.status)
            resp.release()
            given_up()
            wait = retry_after_s(resp.headers.get("Retry-After")) if resp.status in (429, 503) else None
            attempts.append(Attempt(st.name, mode, target, f"status {resp.status}", resp.status, wait))
            return None
        sse = resp.headers.get("content-type", "")[:17].lower() == "text/event-stream"
        upstream: AsyncIterator[bytes] = resp.content.iter_any() if relayed is None else _once(relayed)
        first_at: float | None = None

        def drop(outcome: str | None, running: bool = False) -> None:
            """The attempt given up before its head went on (recorded unless ``outcome`` is None)."""
            resp.close()
            given_up()
            if outcome is not None:
                attempts.append(Attempt(st.name, mode, target, outcome, running=running))

        async def lost() -> None:
            """The body, or a stream's first event, lost before its end (nothing reached the client): told
            to the pod's EPP as a 502, ``kvgate serve``'s status for an upstream's cut (its own status when
            a 5xx), so the EPP charges the pod as for a 5xx's headers (closing-s31: it went on picking a
            pod that cut every answer)."""
            resp.close()
            await told(resp.status if resp.status >= 500 else LOST_STATUS)

        async def held_start(read: Callable[[], Awaitable[_T]]) -> _T:
            """``read``'s answer (the held start of the body); the attempt dropped if it raises."""
            try:
                return await read()
            except PastDeadline as e:
                drop(e.outcome)
                raise
            except BaseException:
                drop(None)
                raise

        if sse and relayed is None:
            # The head held until the stream's first data event, as ``kvgate serve`` holds it (qa30 Q8):
            # a pod (vLLM sends its head before the prefill) or gateway that ends or fails before it has
            # given the client nothing, so the request moves on.
            opening = await held_start(lambda: self._first_event(resp, sent_at, deadline))
            if isinstance(opening, str):  # (the attempt's outcome: it ended, failed or timed out first)
                if opening == FIRST_EVENT_LOST:
                    await lost()
                drop(opening, running=opening != FIRST_EVENT_LOST)
                if death:
                    raise DeathLost(st.name, opening, attempts)
                if kept:
                    raise KeptLost(st.name, resp.status, opening, attempts, resp.headers.get("Retry-After"))
                return None
            if opening is not None:
                first_at = self.clock()
                upstream = _Opened(opening, upstream)
        elif relayed is None and resp.status not in (204, 304):
            got = await held_start(lambda: self._hold(resp, sent_at, deadline))
            if got is None:  # (cut before its end: nothing went to the client)
                await lost()
                drop(BODY_LOST)
                if death:
                    raise DeathLost(st.name, BODY_LOST, attempts)
                if kept:
                    raise KeptLost(st.name, resp.status, BODY_LOST, attempts, resp.headers.get("Retry-After"))
                return None
            opened, held, whole = got
            upstream = _once(opened) if whole else _Opened(opened, upstream)
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP}
        # A repeated Set-Cookie collapses in the dict (its last line kept): every line goes out a line
        # each, as ``kvgate serve``'s (small33; rev-a33-I2). One lookup when there is none.
        cookies: tuple[str, ...] = ()
        if "Set-Cookie" in resp.headers:
            cookies = tuple(resp.headers.getall("Set-Cookie"))
            headers = {k: v for k, v in headers.items() if k.lower() != "set-cookie"}
        if epp is not None:
            # The remote EPP hears the response as from Envoy, so it keeps the request in flight.
            try:
                pod_headers = {k.lower(): v for k, v in resp.headers.items()}
                mutation = await epp.response_headers(resp.status, pod_headers, target)
            except EppImmediate as e:  # preempted before any byte reached the client: as a pod's 429
                resp.close()
                given_up()
                attempts.append(Attempt(st.name, mode, target, f"epp status {e.status}", e.status))
                return None
            except BaseException:
                resp.release()
                given_up()
                raise
            headers = mutation.apply(headers, drop=_DROP)
            epp.body = b""  # sent: the stream lives as long as the response, the request body need not
            streaming = resp.headers.get("content-type", "").startswith("text/event-stream")
            upstream = epp.body_through(upstream, streaming=streaming)
        attempts.append(Attempt(st.name, mode, target, "ok"))
        self.counts[(st.name, mode)] = self.counts.get((st.name, mode), 0) + 1
        response = resp
        settled = begun = False
        # A 2xx event stream's usage event (the last before [DONE]), read once from its bounded tail
        # (``Routed.usage``): its cached tokens classify the answer as a prefix hit or miss there
        # (``ClusterState.finished``, only when the client asked for usage: else none comes, and an
        # engine that adds one unasked was never read for it), and the gateway's token metrics read it.
        tail = UsageTail() if sse and 200 <= resp.status < 300 else None

        async def settle() -> None:
            nonlocal settled, held
            if settled:
                return
            settled = True
            try:
                if begun and isinstance(upstream, AsyncGenerator):
                    with contextlib.suppress(Exception):
                        await upstream.aclose()  # the EPP's end (or its cancel, when cut short)
                elif epp is not None:
                    epp.cancel()  # never read: its body generator never ran, so cancel the EPP's stream
            finally:
                response.release()
                self.held.give(held)
                held = 0
                cached = None
                if usage and (seen := routed.usage()) is not None:
                    cached = seen.cached_share
                # With the time (a 2xx only, as the hub: an error reply is no answer, so it neither
                # sends the prefix there nor opens a slow start; review s7-final-b B): its decode time.
                ok = 200 <= response.status < 300
                st.finished(token, self.clock() if ok else None, cached=cached)

        async def stream() -> AsyncGenerator[bytes, None]:
            nonlocal begun
            begun = True
            try:
                first = started is not None
                # Only a 2xx's first bytes are a TTFT: a fast 400/404 (prompt too long, model not
                # served there) would otherwise set the best-TTFT reference and herd traffic to it.
                evidence = 200 <= response.status < 300
                async for chunk in upstream:
                    if first and started is not None:  # a stream's first bytes: the TTFT seen there
                        first = False
                        now = self.clock() if first_at is None else first_at
                        if evidence:
                            st.observe_ttft(now - started, now, token)
                        else:
                            st.answered_without_ttft(token)
                    if tail is not None:
                        tail.feed(chunk)
                    yield chunk
            finally:
                await settle()

        content = response.content

        def received() -> bool:
            return content.is_eof() and content.exception() is None

        routed = Routed(
            response.status, headers, stream(), st.name, mode, attempts, epp, settle, tail, response.close,
            received, sent_at, cookies,
        )  # fmt: skip
        return routed

    def summary(self) -> list[dict[str, object]]:
        now = self.clock()
        out: list[dict[str, object]] = []
        p = self.policy
        for st in self.state_list():
            a = st.aggregate
            usable = isinstance(p, KvgatePolicy) and a is not None and p.usable(st, now)
            # The weight a request would use now, its class not held (a read changes no routing).
            weight = p.home_weight(st, hold=False) if isinstance(p, KvgatePolicy) and usable else None
            out.append(
                {
                    "name": st.name,
                    "fresh": st.fresh(now, self.cfg.ttl_s),
                    "age_s": None if st.fetched_at is None else round(now - st.fetched_at, 3),
                    "ready_endpoints": None if a is None else a.ready_endpoints,
                    "headroom": None if a is None else a.headroom,
                    "capacity": None if a is None else a.capacity,
                    "healthy": st.healthy,
                    "inflight": st.inflight,
                    "sent_since_snapshot": st.sent_since_snapshot,
                    "sent_total": st.sent_total,
                    "backing_off": not st.available(now),
                    # Endpoint mode: its EPP's stall back-off (qa27 Q7; 0: none) and the stalls that set it.
                    "epp_backoff_s": st.epp.backoff_s,
                    "epp_backing_off": bool(st.epp.backoff_s) and now < st.epp.down_until,
                    "epp_stalls": st.epp.stalls,
                    "fetch_error": st.fetch_error,
                    # What the policy has learnt there (seconds; None: not yet), for benchmarks' traces.
                    "ttft_floor_s": st.ttft_floor_s,
                    "miss_cost_s": st.miss_cost_s,
                    "hit_ttft_s": st.hit_ttft_s,
                    "miss_ttft_s": st.miss_ttft_s,
                    "hit_n": st.hit_n,
                    "miss_n": st.miss_n,
                    "model_bias": round(st.model_bias(now), 4),
                    "decode_s": st.decode_s,
                    "ramp_window": st.ramp_window,
                    "home_weight": weight,
                    "first_to": p.first_to.get(st.name, 0) if isinstance(p, KvgatePolicy) else None,
                    "first_away": p.first_away.get(st.name, 0) if isinstance(p, KvgatePolicy) else None,
                }
            )
        return out
