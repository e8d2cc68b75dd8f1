"""The global router on loopback (fast, default suite): Endpoint mode through a real in-process EPP, the
Parent-mode fallback when the picked pod cannot be reached, failover to the next cluster, and a 503 naming
the last failure when every cluster fails. The same paths across network namespaces: test_netns_e2e.py."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.backend import Backend
from kvgate.bench.ports import free_port
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


def _closed_port() -> str:
    # nothing listens there: connections are refused (outside the ephemeral range and claimed, so no other
    # process's port-0 bind or free_port lands on it, as one could on a port-0 pick closed again)
    return f"127.0.0.1:{free_port()}"


async def _epp(pods: list[str]) -> EppServer:
    store = EndpointStore.from_addresses(pods)
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic)  # fmt: skip
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    return server


@pytest.fixture
async def world() -> AsyncIterator[dict[str, Any]]:
    pod, gw1, gw2 = Backend("pod"), Backend("gw1"), Backend("gw2")
    for b in (pod, gw1, gw2):
        await b.start()
    epp_ok, epp_dead_pod = await _epp([pod.address]), await _epp([_closed_port()])
    yield {"pod": pod, "gw1": gw1, "gw2": gw2, "epp_ok": epp_ok, "epp_dead_pod": epp_dead_pod}
    for e in (epp_ok, epp_dead_pod):
        await e.stop(0)
    for b in (pod, gw1, gw2):
        await b.stop()


async def _run(clusters: list[ClusterSpec], n: int = 4) -> tuple[list[tuple[int, str, str]], GlobalGateway]:
    gw = GlobalGateway(ClustersConfig(tuple(clusters)), "round-robin", fetch=False)
    await gw.start("127.0.0.1", 0)
    out = []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(n):
                body = orjson.dumps({"model": "m", "prompt": f"hello {i}", "max_tokens": 4})
                async with http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=body,
                                     headers={"content-type": "application/json"}) as r:  # fmt: skip
                    await r.read()
                    out.append((r.status, r.headers.get("x-kvgate-cluster", ""),
                                r.headers.get("x-kvgate-route-mode", "")))  # fmt: skip
    finally:
        await gw.stop()
    return out, gw


async def test_endpoint_mode_then_parent_fallback(world: dict[str, Any]) -> None:
    ok = ClusterSpec("ok", gateway=world["gw1"].address, epp=f"127.0.0.1:{world['epp_ok'].port}")
    far = ClusterSpec("far", gateway=world["gw2"].address, epp=f"127.0.0.1:{world['epp_dead_pod'].port}")
    got, gw = await _run([ok, far])
    assert {g for g in got} == {(200, "ok", "endpoint"), (200, "far", "parent")}
    assert world["pod"].received and world["gw2"].received and not world["gw1"].received
    assert gw.router.fallbacks == 2


async def test_failover_to_next_cluster_and_503_when_all_fail(world: dict[str, Any]) -> None:
    world["gw1"].mode = "error500"
    bad = ClusterSpec("bad", gateway=world["gw1"].address)  # Parent mode only, answers 500
    good = ClusterSpec("good", gateway=world["gw2"].address)
    got, gw = await _run([bad, good])
    assert all(g == (200, "good", "parent") for g in got)  # nothing reached the client from "bad"
    assert gw.router.failovers >= 1
    dead = ClusterSpec("dead", gateway=_closed_port())
    got, _ = await _run([bad, dead], n=1)
    assert got[0][0] == 503


async def test_streamed_request_waits_for_its_first_byte_in_the_cluster_state(world: dict[str, Any]) -> None:
    """The policy's censored TTFT evidence: while a streamed request has no first byte, the cluster's state
    holds it with its dispatch time; the first byte turns it into an observed TTFT; a request given up
    (the client left) stops waiting. Non-streamed requests are never counted as waiting."""
    import asyncio

    cfg = ClustersConfig((ClusterSpec("c", gateway=world["gw1"].address),))
    gw = GlobalGateway(cfg, "kvgate", fetch=False, seed=0)
    await gw.start("127.0.0.1", 0)
    st = gw.router.states["c"]
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    try:
        async with aiohttp.ClientSession() as http:
            streamed = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True})
            async with http.post(url, data=streamed) as r:
                assert r.status == 200
                await r.read()
            assert st.ttft_floor_s is not None and st.ttft_floor_s > 0
            assert st.waiting == {} and st.inflight == 0
            plain = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 4})
            async with http.post(url, data=plain) as r:
                await r.read()
            assert st.waiting == {}
            world["gw1"].mode = "hang"  # swallows requests: no first byte
            task = asyncio.create_task(http.post(url, data=streamed))
            for _ in range(1500):  # (30 s: 4 s before)
                if st.waiting:
                    break
                await asyncio.sleep(0.02)
            assert len(st.waiting) == 1
            await asyncio.sleep(0.3)
            assert st.oldest_wait(time.monotonic()) >= 0.3
            assert st.observed_ttft(time.monotonic()) >= 0.3
            task.cancel()
            for _ in range(1500):  # (30 s: 5 s before)
                if not st.waiting:
                    break
                await asyncio.sleep(0.02)
            assert st.waiting == {} and st.inflight == 0
    finally:
        await gw.stop()


async def test_an_error_reply_is_no_ttft_evidence(world: dict[str, Any]) -> None:
    """A cluster that answers 400 at once (prompt too long there) must not become the best-TTFT reference:
    its fast error is not a first token. The request stops waiting all the same."""
    cfg = ClustersConfig((ClusterSpec("c", gateway=world["gw1"].address),))
    gw = GlobalGateway(cfg, "kvgate", fetch=False, seed=0)
    await gw.start("127.0.0.1", 0)
    st = gw.router.states["c"]
    world["gw1"].mode = "error400"
    try:
        async with aiohttp.ClientSession() as http:
            streamed = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True})
            async with http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=streamed) as r:
                assert r.status == 400
                await r.read()
        assert st.ttft_floor_s is None and st.waiting == {} and st.inflight == 0
    finally:
        await gw.stop()


async def _settled(check: Any, tries: int = 250) -> bool:
    import asyncio

    for _ in range(tries):
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_routed_response_never_read_is_settled_by_close(world: dict[str, Any]) -> None:
    """Cancelled (or failed) between ``route()`` and the body's first chunk: the body generator never
    started, so its ``finally`` never runs on ``aclose()``; ``Routed.close()`` still releases the upstream
    connection, cancels the remote EPP's stream and ends the request in the cluster's state (no request
    left waiting for a first byte forever), and is idempotent."""
    from kvgate.multicluster.policies import ClusterRequest
    from kvgate.multicluster.router import GlobalRouter

    pod, gw1 = world["pod"], world["gw1"]
    for b in (pod, gw1):
        b.pause_after = 0  # the stream stops after its first event until resumed
    body = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True})
    epp = f"127.0.0.1:{world['epp_ok'].port}"
    for spec, backend in ((ClusterSpec("p", gateway=gw1.address), gw1), (ClusterSpec("e", epp=epp), pod)):
        router = GlobalRouter(ClustersConfig((spec,)), "round-robin")
        await router.start()
        try:
            st = router.states[spec.name]
            routed = await router.route("/v1/completions", {"content-type": "application/json"}, body,
                                        ClusterRequest("m", "hi", stream=True))  # fmt: skip
            assert routed.status == 200 and routed.mode == ("endpoint" if spec.epp else "parent")
            assert st.inflight == 1 and len(st.waiting) == 1
            await routed.close()  # never iterated
            assert st.inflight == 0 and st.waiting == {}
            await routed.close()
            assert st.inflight == 0
            if routed.epp is not None:
                assert routed.epp._call is not None and routed.epp._call.done()  # the EPP's stream ended
            before = backend.disconnects
            backend.paused.clear()
            backend.resume.set()  # the pod writes on into a connection the router has closed
            assert await _settled(lambda b=backend, n=before: b.disconnects > n)
            backend.resume.clear()
        finally:
            await router.close()


async def test_gateway_settles_a_request_whose_client_left_before_its_first_chunk(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kvgate serve --clusters``: the client gone before the response's headers could be sent (the
    body never read) leaves nothing in flight at the cluster."""
    from kvgate.httpfront.server import Request, StreamResponse

    async def gone(self: StreamResponse, request: Request) -> None:
        raise ConnectionResetError("client gone")

    cfg = ClustersConfig((ClusterSpec("c", gateway=world["gw1"].address),))
    gw = GlobalGateway(cfg, "kvgate", fetch=False, seed=0)
    await gw.start("127.0.0.1", 0)
    st = gw.router.states["c"]
    try:
        monkeypatch.setattr(StreamResponse, "prepare", gone)
        async with aiohttp.ClientSession() as http:
            streamed = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True})
            with contextlib.suppress(aiohttp.ClientError):  # (whatever the front answers the error)
                async with http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=streamed) as r:
                    await r.read()
        assert await _settled(lambda: st.inflight == 0 and not st.waiting)
        assert st.sent_total == 1
    finally:
        monkeypatch.undo()
        await gw.stop()


class _SlowFailingPod(Backend):
    """A pod that answers 500 only after ``delay`` seconds (a failed attempt that took time)."""

    def __init__(self, delay: float) -> None:
        super().__init__("slow500")
        self.delay = delay

    async def _generate(self, request: Any) -> Any:
        import asyncio

        from aiohttp import web

        await asyncio.sleep(self.delay)
        return web.Response(status=500, text="no")


async def test_a_parent_fallback_times_its_ttft_from_its_own_send(world: dict[str, Any]) -> None:
    """Endpoint -> Parent within one cluster: the failed pod attempt's time is no part of the Parent
    attempt's TTFT (it would raise the cluster's floor and model error)."""
    pod = await _SlowFailingPod(delay=1.0).start()
    epp = await _epp([pod.address])
    cfg = ClustersConfig((ClusterSpec("c", gateway=world["gw1"].address, epp=f"127.0.0.1:{epp.port}"),))
    gw = GlobalGateway(cfg, "kvgate", fetch=False, seed=0)
    await gw.start("127.0.0.1", 0)
    st = gw.router.states["c"]
    try:
        async with aiohttp.ClientSession() as http:
            streamed = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True})
            async with http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=streamed) as r:
                assert r.status == 200 and r.headers.get("x-kvgate-route-mode") == "parent"
                await r.read()
        assert gw.router.fallbacks == 1
        assert st.ttft_floor_s is not None and st.ttft_floor_s < 1.0  # (the failed attempt took 1 s)
    finally:
        await gw.stop()
        await epp.stop(0)
        await pod.stop()


async def test_a_streamed_answers_usage_event_classifies_it_as_a_prefix_hit(world: dict[str, Any]) -> None:
    """A streamed answer's usage event (the client asked for it) reports its cached prompt tokens: the
    router's first send of a prefix, a predicted sure miss, counts as a hit when the cluster says 6 of
    its 7 prompt tokens were cached (another gateway sent the tenant there); without the event, the
    prediction stands."""
    from kvgate.datalayer.aggregate import PoolAggregate, build_bloom

    cfg = ClustersConfig((ClusterSpec("c", gateway=world["gw1"].address),))
    gw = GlobalGateway(cfg, "kvgate", fetch=False, seed=0)
    await gw.start("127.0.0.1", 0)
    st = gw.router.states["c"]
    prompt = "system prompt of a tenant, long and shared by every request of it " * 8
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    world["gw1"].cached_tokens = 6
    try:
        async with aiohttp.ClientSession() as http:
            for i, usage in enumerate((True, False)):
                st.set_aggregate(
                    PoolAggregate("c", float(i), 1, 1, capacity=1.0, headroom=1.0, request_slots=8.0,
                                  prefix_bloom=build_bloom([1, 2, 3]), prefix_chunk_chars=64),
                    time.monotonic(),
                )  # fmt: skip
                body: dict[str, Any] = {
                    "model": "m",
                    "prompt": f"{prompt} q{i}",
                    "max_tokens": 4,
                    "stream": True,
                }
                if usage:
                    body["stream_options"] = {"include_usage": True}
                async with http.post(url, data=orjson.dumps(body)) as r:
                    assert r.status == 200
                    await r.read()
                if usage:
                    assert (st.hit_n, st.miss_n) == (1, 0)
            # Same tenant again without the event: a repeat send is no sure miss (and no hit): unchanged.
            assert (st.hit_n, st.miss_n) == (1, 0)
    finally:
        await gw.stop()
