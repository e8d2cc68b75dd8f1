"""Closing note s22 (hub22's note): a cluster found hung (``hung_at``: its gateway answered no probe after a
cut) is left out until an aggregate is fetched from it again. A clusters-file reload removing its
``aggregate:`` left it hung for good: nothing fetches an aggregate any more, and the state (kept across a
reload) still held the last fetch's time, so even a later hang was marked against that old fetch. Now a
reload that removes ``aggregate:`` drops what the last fetch left (the snapshot, its time, the hung mark):
the cluster is one without an aggregate, as if it never had one (a hang then backs it off, as documented,
and marks nothing). The same state serves ``kvgate serve --clusters`` (``GlobalRouter.apply``).

Real ext_proc gRPC to the hub EPP, a loopback gateway whose ``/healthz`` never answers in time (hung), a
loopback aggregate server fetched by the real ``Fetcher``, the real ``ClusterDirector.apply`` reload."""

from __future__ import annotations

import time

from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.extproc.context import AddressIndex
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.hub import ClusterDirector
from kvgate.multicluster.router import GlobalRouter
from kvgate.multicluster.state import ClusterState
from multicluster.conftest import aggregate_app
from multicluster.test_hub_request_timeout import BODY, HEADERS, Healthz, _until

LATER = 3600.0  # (past any back-off: what is left is the hung mark)


async def _cut(stub: pb_grpc.ExternalProcessorStub, east_addr: str) -> None:
    async with Exchange(stub, timeout=30) as ex:
        out = await ex.send_request(HEADERS, BODY)
        assert out.destination.split(",")[0] == east_addr, out.destination
        assert (await ex.read()).immediate_response.status.code == 504


async def test_a_reload_removing_aggregate_leaves_no_hung_cluster_hung() -> None:
    east_health = Healthz(30.0)
    app = web.Application()
    app.router.add_get("/healthz", east_health._healthz)
    gw_runner, gw_port = await serve_app(app, shutdown_timeout=0.1)
    agg_runner, agg_port = await serve_app(aggregate_app())
    east_addr = f"127.0.0.1:{gw_port}"
    west = ClusterSpec("west", gateway="127.0.0.1:10", priority=1)
    east = ClusterSpec("east", gateway=east_addr, aggregate=f"http://127.0.0.1:{agg_port}/aggregate")
    director = ClusterDirector(ClustersConfig((east, west), probe_timeout_s=0.3, request_timeout_s=0.4),
                               "active-passive", seed=0)  # fmt: skip
    fetcher = Fetcher(director.state_list, interval_s=3600, timeout_s=1.0)
    ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
    ctx.request_timeout_s = lambda: director.cfg.request_timeout_s
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    st = director.states["east"]
    try:
        await fetcher.start()  # (one round: east's aggregate fetched)
        assert st.fetched_at is not None
        stub = pb_grpc.ExternalProcessorStub(ch)
        await _cut(stub, east_addr)
        await _until(lambda: not director._live_probes, "the probe after the cut did not end")
        assert st.hung_at is not None and not st.available(time.monotonic() + LATER)  # (found hung)
        director.apply(ClustersConfig((ClusterSpec("east", gateway=east_addr), west), probe_timeout_s=0.3,
                                      request_timeout_s=0.4))  # fmt: skip  # (the reload: no aggregate)
        await fetcher.refresh()
        assert director.states["east"] is st  # (the state is kept across the reload)
        assert st.available(time.monotonic() + LATER), "no aggregate to fetch any more, yet hung for good"
        # A later hang marks nothing: no aggregate will ever say it answers again (it is backed off).
        await _until(lambda: st.available(time.monotonic()), "east's back-off did not end")
        await _cut(stub, east_addr)
        await _until(lambda: east_health.probes == 2 and not director._live_probes, "no second probe")
        assert st.backoff_s > 0
        assert st.available(time.monotonic() + LATER), "hung again against the removed aggregate's fetch"
    finally:
        await ch.close()
        await server.stop(0)
        await fetcher.stop()
        await director.close()
        await gw_runner.cleanup()
        await agg_runner.cleanup()


def test_the_global_gateway_drops_the_hung_mark_alike() -> None:
    """``kvgate serve --clusters`` keeps its states across a reload the same way (``GlobalRouter.apply``)."""
    east = ClusterSpec("east", gateway="127.0.0.1:9", aggregate="http://127.0.0.1:9/aggregate")
    router = GlobalRouter(ClustersConfig((east,)))
    st: ClusterState = router.states["east"]
    st.set_aggregate(PoolAggregate("p", 1.0, 1, 1), time.monotonic())
    st.hung_at = st.fetched_at  # (what a probe that got no answer leaves: ``GlobalRouter._post``)
    router.apply(ClustersConfig((ClusterSpec("east", gateway="127.0.0.1:9"),)))
    assert router.states["east"] is st
    assert st.available(time.monotonic() + LATER), "no aggregate to fetch any more, yet hung for good"
