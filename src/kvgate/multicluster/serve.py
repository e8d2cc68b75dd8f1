"""``kvgate serve --clusters FILE``: the global (multi-cluster) OpenAI-compatible gateway.

Clusters are the candidates: each request's body is parsed once (``kvgate.openai.request``), the policy
orders the clusters from their aggregates, and the router sends it (Endpoint mode, else Parent mode,
else the next cluster). Admin routes on the same port: ``/metrics``, ``/healthz``, ``/readyz`` (some
cluster usable), ``/v1/clusters`` (what this gateway knows of each cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kvgate.multicluster.clusters import ClustersConfig, ClustersError, ClustersFile
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.policies import ClusterRequest, prompt_key
from kvgate.multicluster.router import GlobalRouter, NoRoute
from kvgate.openai.protocol import error_body
from kvgate.openai.request import BodyError, kind_for_path, parse_body

log = logging.getLogger("kvgate.multicluster")


class _Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kvgate_multicluster_requests_total", "Requests started, by cluster and routing mode",
            ["cluster", "mode"], registry=r,
        )  # fmt: skip
        self.failed = Counter(
            "kvgate_multicluster_failed_total", "Requests no cluster could start", registry=r
        )
        self.failovers = Counter(
            "kvgate_multicluster_attempts_failed_total", "Failed attempts, by cluster and mode",
            ["cluster", "mode"], registry=r,
        )  # fmt: skip
        self.usable = Gauge(
            "kvgate_multicluster_cluster_fresh", "1 while the cluster's aggregate is within the TTL",
            ["cluster"], registry=r,
        )  # fmt: skip


class GlobalGateway:
    def __init__(
        self,
        cfg: ClustersConfig,
        policy: str = "kvgate",
        *,
        clusters_file: ClustersFile | None = None,
        clock: Callable[[], float] = time.monotonic,
        fetch: bool = True,
        seed: int = 0,
    ) -> None:
        self.router = GlobalRouter(cfg, policy, clock=clock, seed=seed)
        self.clusters_file = clusters_file
        if clusters_file is not None:
            clusters_file.on_change = self.router.apply
        self.clock = clock
        self.fetcher = (
            Fetcher(self.router.state_list, interval_s=cfg.refresh_s, tls=cfg.tls, clock=clock)
            if fetch
            else None
        )
        self.metrics = _Metrics()
        self._runner: web.AppRunner | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._imports: Any = None  # kvgate.multicluster.imports.ImportController, with kubernetes:
        self._kube_clients: list[Any] = []
        self.port = 0

    # --- routes -------------------------------------------------------------------------------
    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        path = request.path
        try:
            parsed = parse_body(kind_for_path(path), raw)
        except BodyError as e:
            return _error(400, e.message, e.param)
        creq = ClusterRequest(parsed.model, prompt_key(parsed.prompt_text, parsed.token_ids))
        t0 = self.clock()
        try:
            routed = await self.router.route(path, dict(request.headers), raw, creq)
        except NoRoute as e:
            self.metrics.failed.inc()
            for a in e.attempts:
                self.metrics.failovers.labels(a.cluster, a.mode).inc()
            return _error(e.status, e.message, None)
        for a in routed.attempts[:-1]:
            self.metrics.failovers.labels(a.cluster, a.mode).inc()
        self.metrics.requests.labels(routed.cluster, routed.mode).inc()
        resp = web.StreamResponse(status=routed.status, headers=routed.headers)
        resp.headers["x-kvgate-cluster"] = routed.cluster
        resp.headers["x-kvgate-route-mode"] = routed.mode
        try:
            await resp.prepare(request)
            first = parsed.stream
            async for chunk in routed.body:
                if first:  # a stream's first bytes: the TTFT this gateway sees from that cluster
                    first = False
                    st = self.router.states.get(routed.cluster)
                    if st is not None:
                        now = self.clock()
                        st.observe_ttft(now - t0, now)
                await resp.write(chunk)
            await resp.write_eof()
        finally:
            # Cut short (the client left, a write failed) or done: settle the upstream and the EPP now.
            await routed.body.aclose()
        return resp

    async def _metrics(self, _request: web.Request) -> web.Response:
        now = self.clock()
        for st in self.router.state_list():
            self.metrics.usable.labels(st.name).set(1.0 if st.fresh(now, self.router.cfg.ttl_s) else 0.0)
        return web.Response(
            body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _clusters(self, _request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.router.summary()), content_type="application/json")

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.router.order(ClusterRequest()):
            return web.Response(text="ready")
        return web.Response(status=503, text="no cluster ready")

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        await self.router.start()
        if self.fetcher is not None:
            await self.fetcher.start()
        app = web.Application(client_max_size=64 << 20)
        for p in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            app.router.add_post(p, self._proxy)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/clusters", self._clusters)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]
        if self.clusters_file is not None:
            self._reload_task = asyncio.create_task(self._reload_loop())
        if self.router.cfg.kubernetes is not None:
            await self._start_imports()
        return self.port

    async def _start_imports(self) -> None:
        """Clusters from InferencePoolImport (the hub controller writes the imports and feeds the router)."""
        from kvgate.k8s.client import KubeClient
        from kvgate.multicluster.imports import ImportController, Member

        base = self.router.cfg
        kube = base.kubernetes
        assert kube is not None
        hub = await KubeClient.connect(kube.server, kube.kubeconfig)
        self._kube_clients.append(hub)
        members = []
        for m in kube.members:
            client = await KubeClient.connect(m.server, m.kubeconfig)
            self._kube_clients.append(client)
            members.append(Member(m.name, client, m.rtt_ms, m.priority))

        def feed(cfg: ClustersConfig) -> None:
            self.router.apply(dataclasses.replace(base, clusters=cfg.clusters))

        self._imports = ImportController(hub, members, follow=(kube.namespace, kube.name), on_clusters=feed,
                                         ttl_s=base.ttl_s, refresh_s=base.refresh_s)  # fmt: skip
        await self._imports.start()

    async def _reload_loop(self) -> None:
        assert self.clusters_file is not None
        while True:
            await asyncio.sleep(self.clusters_file.check_every_s)
            self.clusters_file.maybe_reload(self.clock())

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        if self._imports is not None:
            await self._imports.stop()
        for client in self._kube_clients:
            await client.close()
        if self.fetcher is not None:
            await self.fetcher.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.router.close()


def _error(status: int, message: str, param: str | None) -> web.Response:
    return web.Response(
        status=status, body=error_body(status, message, param), content_type="application/json"
    )


@dataclass(slots=True)
class ServeArgs:
    clusters: str
    policy: str = "kvgate"
    host: str = "127.0.0.1"
    port: int = 8080


def run(args: ServeArgs) -> int:
    """Blocking entry for ``kvgate serve --clusters``; 2 on a bad clusters file."""
    try:
        cfile = ClustersFile(args.clusters)
    except ClustersError as e:
        print(f"kvgate serve: clusters file error: {e}", file=sys.stderr, flush=True)
        return 2

    async def main() -> None:
        gw = GlobalGateway(cfile.config, args.policy, clusters_file=cfile)
        port = await gw.start(args.host, args.port)
        print(f"kvgate serve: global gateway on http://{args.host}:{port} "
              f"({len(cfile.config.clusters)} clusters, policy {args.policy})", flush=True)  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gw.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0
