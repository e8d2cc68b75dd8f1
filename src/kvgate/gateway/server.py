"""``GatewayServer``: the data and admin listeners, their lifecycle and graceful drain.

Shutdown order: stop listening, answer any new request on kept-alive connections with 503, wait for
in-flight requests (streams included) up to ``limits.drain_timeout_s``, then close everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kvgate.aio import STOP_LIMIT_S, cancel_all_and_wait, stop_to_the_end
from kvgate.config.director import metrics_source
from kvgate.config.gateway import GatewayConfig, Limits
from kvgate.config.rewrite import PoolScopedRewriter, client_names, rule_names
from kvgate.datalayer.aggregate import AGGREGATE_PATH, AggregateSource
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.health import HealthPolicy, ready_endpoints
from kvgate.datalayer.scraper import MetricsScraper, ScrapeSource
from kvgate.flowcontrol import metrics as flow_metrics
from kvgate.gateway.access import refused_line
from kvgate.gateway.errors import GatewayError, error_response, unauthorized
from kvgate.gateway.health import HealthTracker
from kvgate.gateway.lookups import ResponseLookups
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.pools import Pool, build_pool
from kvgate.gateway.proxy import Proxy
from kvgate.gateway.shared_responses import SharedResponses
from kvgate.gateway.shared_tenants import SharedTenants
from kvgate.httpfront.server import READ_METHODS, FrontServer, Handler, Request, Response, get_only, read_only
from kvgate.httpfront.tls import KeyPair, https_context
from kvgate.multicluster.export import aggregate_source
from kvgate.openai.labels import ANY_MODEL, ModelLabels
from kvgate.openai.protocol import CUT_WRITE_S
from kvgate.openai.request import MODELS_PREFIX, OTHER_PATHS, PATHS, RequestPolicy
from kvgate.openai.responses import LOOKUP_PREFIX
from kvgate.requestid import acceptable as acceptable_rid
from kvgate.scheduling import tokenize
from kvgate.scheduling.types import DrainEvictedError

log = logging.getLogger("kvgate.gateway")

# Data sources started at once (each pool's KV-event feed: its subscribers connect and catch up from the
# engines' replay buffers). Bounded: each start opens sockets per endpoint.
SOURCE_STARTS = 8
# A request still queued by flow control at the drain deadline (``GatewayServer.evict_queued``): 503.
DRAIN_EVICTED_MESSAGE = (
    "gateway is shutting down: its drain deadline passed while the request waited in the flow control "
    "queue; it was not sent to any model server (safe to retry)"
)


def admin_ssl(cfg: GatewayConfig) -> ssl.SSLContext | None:
    """The admin port's HTTPS context (``--admin-tls``), client certificates required with a client CA."""
    t = cfg.admin_tls
    if t is None:
        return None
    return https_context(KeyPair(t.cert_pem, t.key_pem), t.client_ca_pem)


async def _bind_held(create: Callable[[bool], Any]) -> asyncio.Server:
    """Bind without listening, held alone: Linux lets a SO_REUSEADDR socket bind an address that other
    SO_REUSEADDR sockets hold as long as none listens, so two gateways starting on one port both bound
    it and the second to listen failed only then (after its whole start-up; under uvloop silently). A
    socket without the flag conflicts with every other bind, so a second start fails at once (SO_REUSEPORT
    siblings excepted: they share the port by design).

    ``create(reuse_address)`` makes the server. First without the flag (a port nothing else holds); if
    taken, with it: what holds the port may be only TIME_WAIT connections of an earlier process, which the
    flag binds past (never past a listening socket), then cleared until ``_listen_data``."""
    try:
        server: asyncio.Server = await create(False)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        server = await create(True)
        _set_reuse_address(server, False)
    return server


def _set_reuse_address(server: asyncio.Server, on: bool) -> None:
    for s in server.sockets:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(on))


def _listens(sock: Any) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except (OSError, ValueError):  # closed (uvloop closes it when its listen fails)
        return False


def route_check(
    front: FrontServer,
    post_only: set[str],
    get_only_paths: set[str],
    get_only_prefixes: tuple[str, ...] = (),
) -> Callable[[str, str], Response | None]:
    """The front's ``route_check``: a path with no route is the 404 ``_not_found`` answers, a method other
    than POST on an API path (``post_only``) the 405 the proxy answers (its API's shape, ``Allow: POST``;
    no request id: none was made), a method other than GET or HEAD on a read-only path (``get_only_paths``,
    or under ``get_only_prefixes``: ``/debug/picks/<id>``, ``/v1/models/<id>``; small33) ``get_only``'s;
    None leaves the request to its handler (the Responses lookups, whose method depends on the path)."""

    def check(method: str, path: str) -> Response | None:
        if path in post_only:
            if method == "POST":
                return None
            err = GatewayError(405, f"{method} is not allowed on {path}; use POST")
            resp = error_response(err, None, path)
            resp.headers["Allow"] = "POST"
            return resp
        if method not in READ_METHODS and (path in get_only_paths or path.startswith(get_only_prefixes)):
            return read_only(method, path)
        if path in front.routes or any(path.startswith(p) for p in front.prefix_routes):
            return None
        return error_response(GatewayError(404, f"no route for {method} {path}"))

    return check


def _key_check(proxy: Proxy) -> Callable[[str, str, dict[str, str]], Response | None]:
    """The front's head check with ``auth`` on: a POST, or any request with a body, without a valid key
    gets its 401 as soon as its head is complete, its body not read, whatever the path (review s17-qa
    H2: checked after the whole body, a keyless client could make the gateway buffer ``maxBodyBytes``
    per connection; an unknown path's 404 came after the body too). Keyless GETs without a body
    (``/v1/models``, the admin routes on the data port) pass. The proxy checks again (and takes the
    tenant) for the requests that pass; while draining it answers 503 first."""
    keys = proxy.keys
    assert keys is not None

    def check(method: str, path: str, headers: dict[str, str]) -> Response | None:
        body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if (method != "POST" and not body) or proxy.draining or keys.tenant(headers):
            return None
        rid = headers.get("x-request-id")  # (echoed only when acceptable: qa24 F6)
        return unauthorized(rid if rid and acceptable_rid(rid) else None, path)  # (its API's shape: R1)

    return check


def _refused_hook(
    proxy: Proxy, posts: frozenset[str]
) -> Callable[[str, str, dict[str, str], Response], None]:
    """A request the front refused once its head was read (401 without a key, 413, 408, ...): its answer
    carries the request id as the proxy's do (the client's if adopted, else a generated one), and on a
    data route it leaves its access line with the log on (qa35b F3: neither before)."""
    lines = proxy.access_lines if proxy.notes is not None else None

    def hook(method: str, path: str, headers: dict[str, str], resp: Response) -> None:
        rid = resp.headers.get("x-request-id")
        if rid is None:
            rid = headers.get("x-request-id")
            if not rid or not acceptable_rid(rid):
                rid = proxy._request_id()
            resp.headers["x-request-id"] = rid
        if lines is not None and path in posts:
            refused_line(lines, rid, method, path, resp.status, len(resp.body))

    return hook


class GatewayServer:
    def __init__(
        self,
        cfg: GatewayConfig,
        pools: list[Pool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        scrape: bool = True,
        *,
        reuse_port: bool = False,
        admin_host: str | None = None,
        admin_on_data: bool = False,
        listen_when_ready: bool = True,
        tenants: SharedTenants | None = None,
        responses: SharedResponses | None = None,
    ) -> None:
        self.cfg = cfg
        # A ``--workers`` worker's view of the fleet's tenant buckets and in-flight count (shared_tenants).
        self.tenants = tenants
        # And of the fleet's Responses ids -> their homes (shared_responses).
        self.responses = responses
        # Worker mode (``--workers``): the data port is shared with sibling processes, and the admin
        # listener is a private one the supervisor reads (see ``gateway.workers``).
        self.reuse_port = reuse_port
        self.admin_host = admin_host or cfg.host
        # A worker whose user gave no admin port serves the admin routes on the data port too, as a
        # single process would (its private admin port is for the supervisor).
        self.admin_on_data = admin_on_data
        # Listen on the data port only once start-up is done (one process or ``--workers``): a request
        # taken while the KV-event catch-up runs is picked on a partial index and unscraped metrics, and
        # with ``--workers`` the kernel hands a listening worker its share of new connections at once. The
        # port is bound at the start and held alone until it listens (``_bind_held``: another process's bind
        # fails at once); a bound socket that does not listen is refused connections (and, in a SO_REUSEPORT
        # group, handed none). False: listen at once.
        self.listen_when_ready = listen_when_ready
        self.clock = clock
        self.pools = pools if pools is not None else [build_pool(p, clock) for p in cfg.pools]
        # One health model for both doors (kvgate.datalayer.health): the config's thresholds.
        policy = HealthPolicy(cfg.health.scrape_failures, cfg.health.metrics_staleness_s)
        self.health_policy = policy
        for pool in self.pools:
            if hasattr(pool.director, "health"):
                pool.director.health = policy
        self.scrape = scrape
        self.metrics = GatewayMetrics()
        # Flow control's model labels (process-wide, else earned at a name's 32nd outcome): the config's
        # names label its families from their first outcome, as the request families' (qa36b-F3).
        flow_metrics.LABELS.models.give(
            m for p in self.pools for m in (*p.cfg.models, *p.cfg.adapters) if m != ANY_MODEL
        )
        # Model labels: the config's names as they are, unless a name the config does not list can be
        # routed: a rewrite rule with no ``matches`` (any name), or Kubernetes' InferenceModelRewrites (names
        # added and dropped live). Then bounded (``kvgate.openai.labels``): the config's names, and the
        # live rules' names while they route (their series go ``GRACE_S`` after a rule drops them and no
        # request under them is in flight); any other name is ``other``.
        self._live_names: frozenset[str] = frozenset()
        if any(not r.matches for r in cfg.rewrites) or any(p.cfg.inference_pool for p in self.pools):
            known = [m for p in self.pools for m in (*p.cfg.models, *p.cfg.adapters)]
            # (the file's rules' names until live rules replace them: ``_policy_listener``; k8s17)
            rules = rule_names(cfg.rewrites)
            labels = ModelLabels(known, reported=lambda: self._live_names, clock=clock, rules=rules)
            if cfg.model_series_grace_s is not None:  # (--model-series-grace)
                labels.grace_s = cfg.model_series_grace_s
            self.metrics.bound(labels)
        self.health = HealthTracker(cfg.health, clock, self._all_endpoints)
        self.session: aiohttp.ClientSession | None = None
        # Set once start() has started every feed and warmed the upstream connections: /readyz waits
        # for it, so the start-up's one-time work (KV-event catch-up, connects) is not on the first requests.
        self.started = False
        self._stopping = False  # stop() was called: a start() still running ends without listening
        self.proxy: Proxy | None = None
        self._servers: list[tuple[asyncio.Server, FrontServer]] = []
        self._data: tuple[asyncio.Server, FrontServer] | None = None  # the data listener, once open
        self._tasks: list[asyncio.Task[None]] = []
        self._scrapers: list[Any] = []  # metrics scrapers and the other data sources (KV events)
        self.port = 0
        self.admin_port: int | None = None
        self._aggregates: dict[str, AggregateSource] = {}
        # Each pool's picker's data sources (KV events), as started: a reload's picker swap stops them.
        self._pool_sources: dict[str, list[Any]] = {}
        self.kube_pools: list[Any] = []  # kvgate.k8s.runtime.KubePool per pool with an inferencePool
        self._kube_rules: dict[str, list[Any]] = {}

    def _all_endpoints(self) -> list[Endpoint]:
        return [ep for p in self.pools for ep in p.endpoints()]

    # --- routes -------------------------------------------------------------------------------
    def _front(self, proxy: Proxy | None, admin: bool) -> FrontServer:
        routes: dict[str, Handler] = {}
        prefix: dict[str, Handler] = {}
        posts: set[str] = set()  # (the API paths: POST only)
        reads: set[str] = set()  # (the admin paths and the model list: GET and HEAD only)
        read_prefixes: list[str] = []
        if proxy is not None:
            posts.update(OTHER_PATHS, PATHS.values())
            reads.add("/v1/models")
            read_prefixes.append(MODELS_PREFIX)
            # One handler per path for every method: it answers 405 itself, as an OpenAI JSON error.
            routes.update(
                {
                    "/v1/completions": proxy.completions,
                    "/v1/chat/completions": proxy.chat,
                    "/v1/embeddings": proxy.embeddings,
                    "/v1/models": proxy.models,
                }
            )
            routes.update(dict.fromkeys(OTHER_PATHS, proxy.other))
            # GET /v1/responses/{id}, POST /v1/responses/{id}/cancel: to the endpoint that holds it
            prefix[LOOKUP_PREFIX] = ResponseLookups(proxy)
            prefix[MODELS_PREFIX] = proxy.model  # GET /v1/models/{id}
        if admin:
            # GET (and HEAD) only: any other method gets 405 with ``Allow``, as the API routes answer.
            admin_routes = {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
                             AGGREGATE_PATH: self._aggregate}  # fmt: skip
            reads.update(admin_routes)
            routes.update({path: get_only(h) for path, h in admin_routes.items()})
            prefix["/debug/picks/"] = get_only(self._debug_pick)
            read_prefixes.append("/debug/picks/")
        front = FrontServer.with_limits(routes, self._not_found, self.cfg.limits, prefix_routes=prefix)
        if proxy is not None:
            # A request the front refuses (413 over maxBodyBytes, malformed HTTP, 408) is counted once,
            # unlabelled, like the proxy's own refusals before a model is known.
            metrics = proxy.metrics
            front.on_reject = lambda status: metrics.error("", "", str(status))
            front.on_refused = _refused_hook(proxy, frozenset(posts))
            if proxy.keys is not None:
                front.head_check = _key_check(proxy)
        front.route_check = route_check(front, posts, reads, tuple(read_prefixes))
        return front

    async def _not_found(self, request: Request) -> Response:
        return error_response(GatewayError(404, f"no route for {request.method} {request.path}"))

    async def _metrics(self, request: Request) -> Response:
        if self.metrics.models is not None:
            self.metrics.models.sweep()  # (an idle gateway's stale model series go too)
        for pool in self.pools:
            update = getattr(pool.director, "update_pool_metrics", None)
            if update is not None:  # (inference_pool_ready_pods: ready endpoints, any pool; qa33a F1)
                update(pool.name)
            # inference_pool_average_running_requests, llm_d_epp_*, kvgate_pool_* (review s17-qa M3)
            self._aggregate_source(pool).refresh_gauges()
        body = generate_latest(self.metrics.registry) + generate_latest(REGISTRY)
        return Response(body=body, content_type=CONTENT_TYPE_LATEST)

    async def _aggregate(self, request: Request) -> Response:
        """The pool aggregate a multi-cluster gateway reads (``?pool=NAME``; default the first pool)."""
        want = dict(p.partition("=")[::2] for p in request.query.split("&") if p).get("pool")
        pool = next((p for p in self.pools if want is None or p.name == want), None)
        if pool is None:
            return error_response(GatewayError(404, f"no pool named {want!r}"))
        return Response(body=self._aggregate_source(pool).body(), content_type="application/json")

    def _aggregate_source(self, pool: Pool) -> AggregateSource:
        source = self._aggregates.get(pool.name)
        if source is None:
            admin_tls = self.cfg.admin_tls if self.cfg.admin_port is not None else None
            source = self._aggregates[pool.name] = aggregate_source(
                pool.name, pool.endpoints, pool.director, clock=self.clock,
                tls=admin_tls is not None, mtls=admin_tls is not None and admin_tls.client_ca_pem is not None,
                models=lambda: self._pool_models(pool),
            )  # fmt: skip
        return source

    def _pool_models(self, pool: Any) -> list[str]:
        """The names this gateway serves from ``pool``: its models and adapters, and the names the rewrite
        rules in force send there (the aggregate lists them for a global gateway's model labels; the
        same names as ``GET /v1/models``)."""
        names = [*pool.cfg.models, *pool.cfg.adapters]
        rules = self.proxy.rewriter.rules if self.proxy is not None else self.cfg.rewrites
        names += [n for n, _ in client_names(rules, set(names)) if n not in names]
        return names

    async def _healthz(self, request: Request) -> Response:
        return Response(text="ok", content_type="text/plain")

    async def _readyz(self, request: Request) -> Response:
        if self.proxy is None or self.proxy.draining:
            return Response(status=503, text="draining", content_type="text/plain")
        if not self.started:
            return Response(status=503, text="starting", content_type="text/plain")
        # Ready while any pool serves (review s31-qa31 Q4): a watched pool with a problem (its InferencePool
        # gone, RBAC refused, its copy stale) does not count and is named, but does not take the pools that
        # serve out of their Service; with none serving, the first problem is the answer.
        problems = {kp.store_pool: p for kp in self.kube_pools if (p := kp.problem()) is not None}
        # The health model routing uses (``datalayer.health.ready_endpoints``: scrape failures and
        # staleness too), not only the ejection flag: a pool whose servers all died is not ready.
        now = self.clock()
        if not any(
            p.name not in problems
            and ready_endpoints(p.endpoints(), now, getattr(p.director, "health", self.health_policy))
            for p in self.pools
        ):
            why = next(iter(problems.values()), "no healthy endpoint")
            return Response(status=503, text=why, content_type="text/plain")
        others = "".join(f"; pool {name}: {p}" for name, p in problems.items())
        return Response(text="ready" + others, content_type="text/plain")

    async def _debug_pick(self, request: Request) -> Response:
        assert self.proxy is not None
        doc = self.proxy.picks.get(request.path.removeprefix("/debug/picks/"))
        if doc is None:
            return error_response(
                GatewayError(
                    404,
                    "no pick recorded for that request id (ring buffer of the last "
                    f"{self.proxy.picks.capacity}, at most {self.proxy.picks.max_bytes} bytes; "
                    "send x-kvgate-explain: 1)",
                )
            )
        return Response(body=doc, content_type="application/json")

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # aiohttp's client only for the health probes (rare); the data path uses upstream.UpstreamPool.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.proxy = Proxy(self.cfg, self.pools, self.metrics, self.health, self.clock, self.tenants)
        if self.responses is not None:
            self.responses.install(self.proxy, self.clock)
        self.health.tls = self.proxy.tls
        self.metrics.track_fronts(lambda: [front for _, front in self._servers])
        await self._bind_data()
        if not self.listen_when_ready:
            await self._listen_data()
        if self.cfg.admin_port is not None:
            self.admin_port = await self._serve(
                self._front(None, admin=True),
                self.admin_host,
                self.cfg.admin_port,
                False,
                admin_ssl(self.cfg),
            )
        self._tasks.append(asyncio.create_task(self.health.run(self.session, self._all_endpoints)))
        if self.scrape:
            for pool in self.pools:
                scraper = MetricsScraper(
                    pool.store,
                    interval=self.cfg.scrape_interval_s,
                    quiet_bound=functools.partial(_scrape_bound, pool),
                    clock=self.clock,
                    scheme=pool.cfg.scheme,
                    tls=self.proxy.tls.get(pool.name),
                    source=functools.partial(_metrics_source, pool),
                )
                await scraper.start()
                if self._stopping:  # stop() ran during its start (and stopped the others): end here
                    await scraper.stop()
                    return
                self._scrapers.append(scraper)
        await self._start_kubernetes()
        if self._stopping:
            return
        # The data layer's other feeds (KV events) start here too, never on a first pick: all at once (a
        # KV-event source's start waits up to its catch-up bound, so one pool after another added them up).
        sources = []
        for p in self.pools:
            self._pool_sources[p.name] = mine = list(getattr(p.director, "data_sources", list)())
            sources += mine
        await self._start_sources(sources)
        if self._stopping:  # stop() ran meanwhile (it closed the listeners): end here, not listening
            return
        await self.proxy.warm_upstreams()
        # What the first request would otherwise build inside its pick (the tokenizers' worker threads).
        tokenize.warm()
        if self._stopping:
            return
        await self._listen_data()
        self.started = True
        log.info(
            "kvgate gateway on http://%s:%d (admin %s)",
            self.cfg.host,
            self.port,
            self.admin_port if self.admin_port is not None else "on the data port",
        )

    async def _start_sources(self, sources: list[Any]) -> None:
        """All at once (at most ``SOURCE_STARTS``); the first that fails cancels the others' starts, which
        have all ended when it is raised (a gather left them running: they added themselves after stop)."""
        gate = asyncio.Semaphore(SOURCE_STARTS)

        async def start(source: Any) -> None:
            async with gate:
                if self._stopping:  # stop() ran while this one waited for the gate: never start it
                    return
                self._scrapers.append(source)  # stopped by stop() even if its start fails half-way
                await source.start()

        try:
            async with asyncio.TaskGroup() as group:
                for s in sources:
                    group.create_task(start(s))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # what start() raised, as a gather raised it

    # --- a config reload's picker swap (gateway.reload) ------------------------------------------
    async def start_picker_sources(self, sources: list[Any]) -> list[Any]:
        """A new picker's data sources (KV events), started (their catch-up done) before it takes a
        request. If one fails, those started are stopped and the error raised."""
        try:
            await self._start_sources(sources)
        except BaseException:
            await self.stop_sources(sources)
            raise
        return sources

    def swap_picker(self, pool: Pool, director: Any, sources: list[Any]) -> list[Any]:
        """``pool`` picks with ``director`` from now on (requests already admitted keep theirs: the proxy
        holds each request's Director; the reload's plan gave it the running health policy); the pool's
        aggregate is built again on its next read. Returns the old picker's data sources, for
        ``stop_sources``."""
        pool.director = director
        self._aggregates.pop(pool.name, None)
        old = self._pool_sources.get(pool.name, [])
        self._pool_sources[pool.name] = sources
        return old

    async def stop_sources(self, sources: list[Any]) -> None:
        """Every one of ``sources`` stopped (and no longer stopped by ``stop``), to the end also when
        cancelled meanwhile, the cancellation raised after (``stop_to_the_end``: a cancel landing in a KV
        source's stop, a config reload's ``settle`` cancelled by the gateway's stop, ended it with some of
        its subscribers still held, and nothing stopped them later: the source had left ``_scrapers``)."""
        await stop_to_the_end(self._stop_sources(sources), "stopping a picker's data sources", log)

    async def _stop_sources(self, sources: list[Any]) -> None:
        for s in sources:
            if s in self._scrapers:
                self._scrapers.remove(s)
            try:
                await s.stop()
            except Exception:  # one that fails to stop must not keep the others running
                log.exception("stopping a data source failed")

    async def _bind_data(self) -> None:
        """The data port, bound but not listening yet (``_listen_data``)."""
        assert self.proxy is not None
        self.port = await self._serve(
            self._front(self.proxy, admin=self.cfg.admin_port is None or self.admin_on_data),
            self.cfg.host,
            self.cfg.port,
            self.reuse_port,
            listen=False,
        )
        self._data = self._servers[-1]

    async def _listen_data(self) -> None:
        assert self._data is not None
        server = self._data[0]
        if server.is_serving():
            return
        # SO_REUSEADDR again before listening: the connections it accepts inherit the flag, and their
        # TIME_WAIT leftovers then let the next start on this port bind past them (``_bind_held``).
        _set_reuse_address(server, True)
        await server.start_serving()
        # uvloop's start_serving swallows a failed listen() (EADDRINUSE: another socket on the port
        # listened first): no error, the socket closed, nothing accepted. Check that each one listens.
        if not server.sockets or not all(_listens(s) for s in server.sockets):
            raise OSError(errno.EADDRINUSE, f"data port {self.cfg.host}:{self.port} does not listen (taken)")

    async def _start_kubernetes(self) -> None:
        """Pools with ``inferencePool``: their endpoints, objectives and rewrites come from Kubernetes."""
        wanted = [p for p in self.pools if p.cfg.inference_pool is not None]
        if not wanted:
            return
        from kvgate.k8s import resources as R
        from kvgate.k8s.runtime import KubeOptions, KubePool
        from kvgate.k8s.stalepolicy import staleness_policy

        # (checked, and warned about, by the command line: kvgate.gateway.cli.build_config)
        stale = staleness_policy(
            self.cfg.kube_stale_after_s, self.cfg.kube_stale_not_ready_after_s, warn=False
        )
        for pool in wanted:
            ref = pool.cfg.inference_pool
            assert ref is not None
            opts = KubeOptions(
                ref.name, ref.namespace, server=self.cfg.kube_server, kubeconfig=self.cfg.kubeconfig,
                pool_group=ref.group or self.cfg.kube_pool_group or R.INFERENCE_POOL.group, staleness=stale,
            )  # fmt: skip
            kp = KubePool(opts, pool.store, store_pool=pool.name, on_policy=self._policy_listener(pool))
            await kp.start()
            if self._stopping:  # stop() ran during its start: no watch left running after it
                await kp.stop()
                return
            self.kube_pools.append(kp)

    def _policy_listener(self, pool: Pool) -> Callable[[dict[str, int], list[Any]], None]:
        def on_policy(objectives: dict[str, int], rules: list[Any]) -> None:
            # This pool's InferenceObjectives replace the file's ``objectives`` for it, its
            # InferenceModelRewrites the file's rules that target only its models, live; while it has
            # none, the file's stand. Each pool's rules apply to its own models and to aliases only
            # (``PoolScopedRewriter``; review s31-qa31 Q1, Q3).
            proxy = self.proxy
            if proxy is None:
                return
            proxy.policies[pool.name] = RequestPolicy(
                pool.adapters,
                self.cfg.session_header,
                objectives or self.cfg.objectives,
                pool.cfg.pass_priority,
            )
            if rules == self._kube_rules.get(pool.name, []):
                return  # (no new rewriter: a weighted split's draws go on, not restarted from the seed)
            self._kube_rules[pool.name] = rules
            served = {name: p.name for name, p in proxy.routes.items()}
            rewriter = PoolScopedRewriter(self.cfg.rewrites, served, self._kube_rules, self.cfg.rewrite_seed)
            proxy.rewriter = rewriter
            if self.metrics.models is not None:  # (the file's rules replaced: their names too)
                self.metrics.models.set_rules(rule_names(rewriter.file_rules))
            live = [r for rs in self._kube_rules.values() for r in rs]
            names = frozenset(rule_names(live))
            if names != self._live_names:  # (a new set only on a change: ``ModelLabels`` recounts then)
                self._live_names = names

        return on_policy

    async def _serve(
        self,
        front: FrontServer,
        host: str,
        port: int,
        reuse_port: bool,
        tls: ssl.SSLContext | None = None,
        *,
        listen: bool = True,
    ) -> int:
        loop = asyncio.get_running_loop()

        async def create(reuse_address: bool) -> asyncio.Server:
            return await loop.create_server(
                front.protocol,
                host,
                port,
                backlog=4096,
                reuse_address=reuse_address,
                reuse_port=reuse_port or None,
                ssl=tls,
                start_serving=listen,
            )

        server = await (create(True) if listen else _bind_held(create))
        self._servers.append((server, front))
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def apply_limits(self, new: Limits) -> dict[str, tuple[float, float]]:
        """A config reload's ``limits``, live; returns {attribute: (old, new)} for those that changed.

        Every knob applies without a restart: the fronts' (body cap, deadlines, write buffer, connection
        cap: ``FrontServer.apply_limits``, data and admin ports), the proxy's (request, idle and connect
        timeouts, to requests that start after it; the Responses turns it keeps, ``responseTurns``, trimmed
        at once), and those read from ``cfg.limits`` per request (concurrency cap, attempts, the proxy's own
        body check) or at the drain."""
        cur = self.cfg.limits
        changed = {
            f.name: (getattr(cur, f.name), getattr(new, f.name))
            for f in dataclasses.fields(Limits)
            if getattr(cur, f.name) != getattr(new, f.name)
        }
        for name, (_, value) in changed.items():
            setattr(cur, name, value)  # the running config: the proxy reads it per request
        for _, front in self._servers:
            front.apply_limits(cur)
        if self.proxy is not None:
            self.proxy.request_timeout = cur.request_timeout_s or None
            self.proxy.upstream.connect_timeout = cur.connect_timeout_s
            self.proxy.upstream.idle_timeout = cur.idle_timeout_s
            self.proxy.turns.resize(cur.response_turns)  # (the Responses turns kept: trimmed at once)
        return changed

    def evict_queued(self) -> int:
        """The drain deadline: every request still in a flow-control queue (each pool's picker, and a
        reload's predecessors still draining theirs) leaves it, recorded ``EvictedOther``, its client
        answered 503 with ``Retry-After`` (``DrainEvictedError``); none is dispatched after this. Returns
        how many were answered."""
        n = 0
        for pool in self.pools:
            director: Any = pool.director
            while director is not None:
                flow = getattr(director, "flow", None)
                if flow is not None:
                    for item in flow.ctl.evict_all(flow.clock()):
                        fut = item.handle
                        if isinstance(fut, asyncio.Future) and not fut.done():
                            fut.set_exception(DrainEvictedError(DRAIN_EVICTED_MESSAGE))
                            n += 1
                director = getattr(director, "predecessor", None)
        return n

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Graceful: stop accepting, drain in-flight requests (bounded), then close. Cancelled meanwhile,
        it still closes everything, then raises the cancellation (``stop_to_the_end``)."""
        timeout = self.cfg.limits.drain_timeout_s if drain_timeout is None else drain_timeout
        await stop_to_the_end(self._stop(timeout), "the gateway's stop", log, timeout + STOP_LIMIT_S)

    async def _stop(self, drain_s: float) -> None:
        self._stopping = True
        if self.proxy is not None:
            self.proxy.draining = True
        # Close the data listener first so no new connection is accepted during the drain, and
        # stop keeping client connections alive (idle ones close now, busy ones after their reply).
        deadline = asyncio.get_running_loop().time() + drain_s
        if self._data is not None:
            data_server, data_front = self._data
            data_server.close()
            data_front.drain()
            if data_front.reading:
                # A request still arriving when the drain began (or unread in the kernel): read and
                # answered (503 now, ``Connection: close``) within the deadline (review s17-doors F2).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await data_front.reads_done()
        if self.proxy is not None and self.proxy.inflight:
            log.info("draining %d in-flight requests (up to %.0fs)", self.proxy.inflight, drain_s)
            with contextlib.suppress(TimeoutError):  # (not wait_for, which on 3.11 may drop a cancel)
                async with asyncio.timeout_at(deadline):
                    await self.proxy.idle.wait()
            if self.proxy.inflight:  # (said: a drain cut short is told apart from a clean one)
                log.warning("%s", drain_cut_message(drain_s, self.proxy.inflight))
                # What flow control still queues never ran anywhere: it leaves the queue now, answered
                # 503 (Retry-After, Connection: close), never sent in the second below (review s20-qa M1).
                evicted = self.evict_queued()
                if evicted:
                    log.warning("%s", drain_evict_message(evicted))
                # Streams mid-body end with an error event and a clean end, not a cut connection: each
                # relay writes its own (bounded: a client not reading is cut with its connection below).
                # A stream that starts relaying in that second is cut at once the same way (review
                # s16-doors L6), so the wait is for every request in flight, not only the streams cut.
                self.proxy.cut_streams(drain_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CUT_WRITE_S):
                        await self.proxy.idle.wait()
        if self._data is not None and self._data[1].reading:
            # A request pipelined behind an answer that ended in the drain: answered (503) before the
            # connections are closed below (qa33b-F1), within the deadline.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._data[1].reads_done()
        try:
            await cancel_all_and_wait(self._tasks, "the gateway's task", log)
            self._tasks.clear()
            for kp in self.kube_pools:
                await kp.stop()
            self.kube_pools.clear()
            for s in self._scrapers:
                await s.stop()
            self._scrapers.clear()
            for server, front in reversed(self._servers):
                server.close()
                front.close_all()
            self._servers.clear()
            self._data = None
            if self.proxy is not None and self.proxy.inflight:
                # The requests cut with their connections end on the next loop turns, each writing its
                # access line (499) as it ends: bounded (review s24-rev-fix24b F1).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CUT_WRITE_S):
                        await self.proxy.idle.wait()
            if self.proxy is not None:
                self.proxy.close_upstream()
        finally:
            if self.proxy is not None:  # (the buffered access lines: review s24-rev-fixqa24 R4; a late
                self.proxy.close_access()  # line after this is written at once: s24-rev-fix24b F1)
        if self.session is not None:
            await self.session.close()
            self.session = None


def drain_evict_message(n: int) -> str:
    s = "" if n == 1 else "s"
    return (
        f"drain deadline: {n} request{s} still queued by flow control answered 503 (EvictedOther), "
        "never sent to a model server"
    )


def drain_cut_message(drain_s: float, inflight: int) -> str:
    """The WARNING of a drain cut short: the count is what was in flight *at the deadline*; the
    connections are closed later in the stop (after its tasks and scrapers stopped), so a request may
    still end meanwhile (review s15-hard I2)."""
    s = "" if inflight == 1 else "s"
    return (
        f"drain deadline ({drain_s:g}s) passed with {inflight} request{s} in flight at the deadline: the "
        "streams among them end with an error event; the connections of those still in flight when the "
        "gateway closes them are cut"
    )


def _metrics_source(pool: Pool) -> ScrapeSource | None:
    """The pool's picker config's ``metrics-data-source`` settings, read at each scrape (a reload's new
    picker's from its next)."""
    return metrics_source(pool.director)


def _scrape_bound(pool: Pool) -> float | None:
    """The pool's director's ``scrape_bound`` for its scraper's quiet cadence, read at each pause (a
    config reload may swap the director); None: not a ``Director``."""
    bound = getattr(pool.director, "scrape_bound", None)
    return bound() if callable(bound) else None
