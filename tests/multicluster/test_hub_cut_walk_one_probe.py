"""Closing note s22 ("Noticed and left undone"): the hub's cut walk (``ClusterDirector._live``: after a cut
before the head, a primary that takes no connection hands the cut to the next address) registered its probe
under the first cluster only (``_live_probes``). A fallback it reached was probed a second time when that
fallback's own probe after a cut was in flight already, and a cut of the fallback while the walk probed it
started another probe of it: "one probe per cluster at a time" (docs/multicluster.md) held for primaries
only. Now the walk's probe is registered under the cluster it probes, and a fallback with a probe of its
own in flight is charged but not probed again.

Over real ext_proc gRPC: west (priority 0) a loopback gateway whose ``/healthz`` never answers in time
(hung), east (priority 1) a loopback port that refuses connections. The first request goes to west first:
cut, west charged and probed (for ``probe_timeout_s``). The second, sent then, goes to east first (west
backs off): cut, east refused the walk's connect, so west is charged again, while its first probe is still
in flight."""

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
from kvgate.multicluster.hub import ClusterDirector
from kvgate.scheduling.types import InferenceRequest
from multicluster.test_hub_cut_fallback import _refusing
from multicluster.test_hub_request_timeout import BODY, HEADERS, Healthz, _until


async def test_a_fallback_the_cut_walk_reaches_while_its_own_probe_runs_is_not_probed_twice() -> None:
    west_health = Healthz(30.0)  # (takes the connection, never answers within probe_timeout_s: hung)
    app = web.Application()
    app.router.add_get("/healthz", west_health._healthz)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    with _refusing() as east_addr:
        west_addr = f"127.0.0.1:{port}"
        specs = (ClusterSpec("west", gateway=west_addr), ClusterSpec("east", gateway=east_addr, priority=1))
        # (probe_timeout_s: west's first probe is still in flight when the second request is cut)
        cfg = ClustersConfig(specs, probe_timeout_s=4.0, request_timeout_s=0.5)
        director = ClusterDirector(cfg, "active-passive", seed=0)
        west = director.states["west"]
        for st in director.state_list():
            st.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), time.monotonic())
        ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
        ctx.request_timeout_s = lambda: director.cfg.request_timeout_s
        server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
        await server.start()
        ch = channel(f"127.0.0.1:{server.port}")
        try:
            stub = pb_grpc.ExternalProcessorStub(ch)
            async with Exchange(stub, timeout=5) as ex:
                out = await ex.send_request(HEADERS, BODY)
                assert out.destination == f"{west_addr},{east_addr}", out.destination
                assert (await ex.read()).immediate_response.status.code == 504
            await _until(lambda: west_health.probes == 1, "west's probe after its cut did not come")
            assert "west" in director._live_probes
            async with Exchange(stub, timeout=5) as ex:  # (west backs off: east first)
                out = await ex.send_request(HEADERS, BODY)
                assert out.destination == f"{east_addr},{west_addr}", out.destination
                assert (await ex.read()).immediate_response.status.code == 504
            assert west.failures == 2, "the walk did not charge west, the fallback that held the bound"
            # (the walk probes west a second time, or ends without: east holds no probe any more)
            await _until(lambda: west_health.probes > 1 or "east" not in director._live_probes,
                         "east's walk neither probed west nor ended")  # fmt: skip
            assert west_health.probes == 1, "west probed again while its probe after a cut was in flight"
            assert "west" in director._live_probes, "west's probe ended early: the test proves nothing"
        finally:
            await ch.close()
            await server.stop(0)
            await director.close()
            await runner.cleanup()


async def test_a_cut_of_the_fallback_the_walk_is_probing_starts_no_second_probe() -> None:
    """East (priority 0) refuses, west (1) hangs: the first request's cut walks from east to west and
    probes west. A cut of west itself meanwhile (a request sent to west first, as its session reports it:
    ``on_cut``) finds west's probe in flight, as a primary's would."""
    west_health = Healthz(30.0)
    app = web.Application()
    app.router.add_get("/healthz", west_health._healthz)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    with _refusing() as east_addr:
        west_addr = f"127.0.0.1:{port}"
        specs = (ClusterSpec("east", gateway=east_addr), ClusterSpec("west", gateway=west_addr, priority=1))
        cfg = ClustersConfig(specs, probe_timeout_s=2.0, request_timeout_s=0.5)
        director = ClusterDirector(cfg, "active-passive", seed=0)
        for st in director.state_list():
            st.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), time.monotonic())
        ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
        ctx.request_timeout_s = lambda: director.cfg.request_timeout_s
        server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
        await server.start()
        ch = channel(f"127.0.0.1:{server.port}")
        try:
            async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=5) as ex:
                out = await ex.send_request(HEADERS, BODY)
                assert out.destination == f"{east_addr},{west_addr}", out.destination
                assert (await ex.read()).immediate_response.status.code == 504
            await _until(lambda: west_health.probes == 1, "the walk did not probe west")
            west_ep = next(ep for ep in director.store.all() if ep.address == west_addr)
            req = InferenceRequest("r2", "m", prompt_text="p")
            director.on_cut(req, west_ep, headed=False, steady=False, bound_s=0.5)
            await _until(lambda: west_health.probes > 1 or not director._live_probes, "no probe ended")
            assert west_health.probes == 1, "a cut of west started a second probe while the walk probed it"
        finally:
            await ch.close()
            await server.stop(0)
            await director.close()
            await runner.cleanup()
