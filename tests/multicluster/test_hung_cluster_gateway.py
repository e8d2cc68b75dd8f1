"""A hung cluster gateway (a wedged event loop, a stopped process: the kernel still accepts and ACKs, nothing
answers) does not hold requests to the read timeout (review s19-qa M3: 300 s, and ``round-robin`` kept
sending every other request there): a request waits for its response head at most ``head_timeout_s``, in
Parent mode also only until the cluster's aggregate (fresh when it was sent) has gone stale with its fetches
failing; either way it moves to the next cluster (nothing reached the client) and the hung cluster is left
out until an aggregate is fetched from it again. A stream that sends its head, then bytes further apart than
``head_timeout_s``, is not cut. Short bounds here; the QA's black-box test took ~95 s."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate, encode
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.conftest import post_raw

WAIT_S = 15.0  # a client's patience: well under the read timeout (300 s), over the bounds used here


class ClusterGateway:
    """A cluster gateway and its ``/v1/pool/aggregate`` in one process; ``freeze()``: both answer nothing
    (handlers wait forever), as a stopped process; ``gap_s``: a stream's chunks that far apart."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.thaw = asyncio.Event()
        self.thaw.set()
        self.arrived = 0  # generation requests taken while frozen
        self.gap_s = 0.0
        self.address = self.aggregate = ""
        self._runner: web.AppRunner | None = None

    def freeze(self) -> None:
        self.thaw.clear()

    async def _hold(self) -> None:
        await self.thaw.wait()

    async def _healthz(self, _request: web.Request) -> web.Response:
        await self._hold()
        return web.Response(status=404)  # any answer: the gateway lives

    async def _aggregate(self, _request: web.Request) -> web.Response:
        await self._hold()
        agg = PoolAggregate(name=self.name, snapshot_time=time.time(), ready_endpoints=1, total_endpoints=1,
                            capacity=8.0, headroom=8.0, models=["m"])  # fmt: skip
        return web.Response(body=encode(agg), content_type="application/json")

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not self.thaw.is_set():
            self.arrived += 1
        await self._hold()
        if not body.get("stream"):
            return web.json_response({"object": "text_completion", "model": "m", "served_by": self.name,
                                      "choices": [{"index": 0, "text": "ok"}]})  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            if i:
                await asyncio.sleep(self.gap_s)
            await resp.write(b'data: {"choices":[{"index":0,"text":"t%d"}]}\n\n' % i)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def start(self) -> ClusterGateway:
        app = web.Application()
        app.router.add_get("/v1/pool/aggregate", self._aggregate)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/v1/completions", self._complete)
        self._runner, port = await serve_app(app, shutdown_timeout=0.1)
        self.address = f"127.0.0.1:{port}"
        self.aggregate = f"http://{self.address}/v1/pool/aggregate"
        return self

    async def stop(self) -> None:
        self.thaw.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def clusters() -> AsyncIterator[tuple[ClusterGateway, ClusterGateway]]:
    east, west = await ClusterGateway("east").start(), await ClusterGateway("west").start()
    yield east, west
    await east.stop()
    await west.stop()


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Awaitable[GlobalGateway]]]:
    running: list[GlobalGateway] = []

    async def make(cfg: ClustersConfig, policy: str, *, fetch: bool) -> GlobalGateway:
        gw = GlobalGateway(dataclasses.replace(cfg, probe_timeout_s=0.5), policy, fetch=fetch, seed=1,
                           drain_s=0.5)  # fmt: skip
        await gw.start("127.0.0.1", 0)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        await gw.stop()


async def _post(port: int, *, stream: bool = False) -> tuple[int | str, bytes]:
    status, data, _ = await post_raw(port, stream=stream, wait_s=WAIT_S)
    return status, data


@pytest.mark.parametrize("policy", ["kvgate", "round-robin"])
async def test_requests_leave_a_cluster_gateway_that_hangs_with_its_aggregate(
    clusters: tuple[ClusterGateway, ClusterGateway], started: Callable[..., Awaitable[GlobalGateway]],
    policy: str,
) -> None:  # fmt: skip
    east = clusters[0]
    specs = tuple(ClusterSpec(c.name, aggregate=c.aggregate, gateway=c.address) for c in clusters)
    # A head bound far past the client's patience: the aggregate going stale is what moves them on here.
    cfg = ClustersConfig(specs, ttl_s=1.0, refresh_s=0.2, head_timeout_s=120.0)
    gw = await started(cfg, policy, fetch=True)
    st = gw.router.states
    for _ in range(600):  # (30 s: 5 s before)
        if all(s.fresh(time.monotonic(), cfg.ttl_s) for s in st.values()):
            break
        await asyncio.sleep(0.05)
    east.freeze()

    async def one(i: int) -> tuple[int | str, bytes]:
        await asyncio.sleep(i * 0.2)
        return await _post(gw.port)

    res = await asyncio.gather(*(one(i) for i in range(6)))
    assert [s for s, _ in res] == [200] * 6, res
    assert all(b'"served_by": "west"' in d for _, d in res)
    # Found hung: left out (round-robin too) while no aggregate comes from it, nothing more sent there.
    assert not st["east"].available(time.monotonic()) and st["east"].hung_at is not None
    sent = east.arrived
    assert sent >= 1  # (some were sent to the hung cluster, and moved on)
    again = [await _post(gw.port) for _ in range(4)]
    assert [s for s, _ in again] == [200] * 4, again
    assert east.arrived == sent
    assert any(s["name"] == "east" and s["backing_off"] for s in gw.router.summary())


async def test_head_timeout_bounds_the_wait_and_a_slow_stream_is_not_cut(
    clusters: tuple[ClusterGateway, ClusterGateway], started: Callable[..., Awaitable[GlobalGateway]],
) -> None:  # fmt: skip
    """No aggregates fetched: ``head_timeout_s`` tells the hung cluster, a stream's head directly, a
    non-streamed request's (its head comes with the whole answer) by a probe of the gateway past it."""
    east, west = clusters
    specs = (ClusterSpec("east", gateway=east.address), ClusterSpec("west", gateway=west.address))
    gw = await started(ClustersConfig(specs, head_timeout_s=0.5), "round-robin", fetch=False)
    east.freeze()
    for stream in (True, False):
        # Round-robin: one of the two is sent to east first (east backs off after the first round).
        res = [await _post(gw.port, stream=stream) for _ in range(2)]
        assert [s for s, _ in res] == [200, 200], res
        assert east.arrived == 1
        assert gw.router.states["east"].backoff_s > 0  # backs off: the next ones go to west
        gw.router.states["east"].succeeded()
        east.arrived = 0
    # A stream whose chunks are further apart than the head bound (its head came at once) completes.
    west.gap_s = 0.8
    status, data = await _post(gw.port, stream=True)
    assert status == 200 and b"t2" in data and b"data: [DONE]" in data, data


async def test_a_request_sent_while_the_aggregate_was_stale_leaves_once_its_gateway_answers_no_probe(
    clusters: tuple[ClusterGateway, ClusterGateway], started: Callable[..., Awaitable[GlobalGateway]],
) -> None:  # fmt: skip
    """A request sent after the hung cluster's aggregate went stale (review s19-qa M3, the window after
    the first fix) does not wait ``head_timeout_s``: the stale aggregate has the gateway probed, and
    no answer to the probe moves the request on and marks the cluster hung."""
    east = clusters[0]
    specs = tuple(ClusterSpec(c.name, aggregate=c.aggregate, gateway=c.address) for c in clusters)
    gw = await started(ClustersConfig(specs, ttl_s=0.4, head_timeout_s=120.0), "round-robin", fetch=False)
    st = gw.router.states["east"]
    agg = PoolAggregate(name="east", snapshot_time=1.0, ready_endpoints=1, total_endpoints=1)
    st.set_aggregate(agg, time.monotonic() - 5.0)  # stale, its fetches failing
    st.fetch_error = "TimeoutError: "
    east.freeze()
    res = await asyncio.gather(*(_post(gw.port) for _ in range(2)))  # round-robin: one of them to east
    assert east.arrived == 1
    assert [s for s, _ in res] == [200, 200] and all(b'"served_by": "west"' in d for _, d in res), res
    assert st.hung_at is not None and not st.available(time.monotonic())


class SlowCluster(ClusterGateway):
    """A live cluster gateway (review s19-fixes-b): a non-streamed answer after ``delay_s`` (a long
    generation); its aggregate (an EPP's, in the usual layout) can fail (500) while the gateway serves."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.delay_s = 0.0
        self.agg_ok = True
        self.sent = 0

    async def _aggregate(self, request: web.Request) -> web.Response:
        if not self.agg_ok:
            return web.Response(status=500)
        return await super()._aggregate(request)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        self.sent += 1
        await asyncio.sleep(self.delay_s)
        return await super()._complete(request)


@pytest.fixture
async def slow() -> AsyncIterator[tuple[SlowCluster, SlowCluster]]:
    east, west = await SlowCluster("east").start(), await SlowCluster("west").start()
    yield east, west
    await east.stop()
    await west.stop()


async def _fresh(gw: GlobalGateway, ttl: float) -> None:
    for _ in range(1500):  # (30 s: 4 s before)
        if all(s.fresh(time.monotonic(), ttl) for s in gw.router.states.values()):
            return
        await asyncio.sleep(0.02)


async def test_a_long_non_streamed_generation_on_a_live_cluster_is_not_cut_by_head_timeout(
    slow: tuple[SlowCluster, SlowCluster], started: Callable[..., Awaitable[GlobalGateway]],
) -> None:  # fmt: skip
    """Review s19-fixes-b M1, scaled (head_timeout_s 0.3 s for 120 s, a 1 s generation for > 120 s): a
    non-streamed answer's head comes with the whole answer; the live cluster is not abandoned, the
    answer not generated again elsewhere, the cluster not backed off."""
    east, west = slow
    specs = tuple(ClusterSpec(c.name, aggregate=c.aggregate, gateway=c.address) for c in slow)
    cfg = ClustersConfig(specs, ttl_s=1.0, refresh_s=0.1, head_timeout_s=0.3)
    gw = await started(cfg, "round-robin", fetch=True)
    await _fresh(gw, cfg.ttl_s)
    east.delay_s = west.delay_s = 1.0
    status, data = await _post(gw.port)
    assert status == 200, data
    assert east.sent + west.sent == 1, (east.sent, west.sent)  # generated once
    assert all(s.backoff_s == 0 for s in gw.router.states.values())


async def test_an_aggregate_outage_does_not_cut_requests_on_a_serving_cluster_gateway(
    slow: tuple[SlowCluster, SlowCluster], started: Callable[..., Awaitable[GlobalGateway]],
) -> None:  # fmt: skip
    """Review s19-fixes-b M2: the aggregate (the cluster EPP's) fails for longer than ttl_s while the
    gateway serves a 1.2 s non-streamed answer: answered by the cluster it was sent to, once, which is
    not marked hung (its gateway answers the probe)."""
    east, west = slow
    specs = tuple(ClusterSpec(c.name, aggregate=c.aggregate, gateway=c.address) for c in slow)
    cfg = ClustersConfig(specs, ttl_s=0.3, refresh_s=0.1, head_timeout_s=120.0)
    gw = await started(cfg, "round-robin", fetch=True)
    await _fresh(gw, cfg.ttl_s)
    east.delay_s = west.delay_s = 1.2
    task = asyncio.create_task(_post(gw.port))
    for _ in range(3000):  # (30 s: 2 s before)
        if east.sent or west.sent:
            break
        await asyncio.sleep(0.01)
    first = east if east.sent else west
    first.agg_ok = False  # its EPP restarts; the gateway keeps serving
    status, data = await task
    assert status == 200 and f'"served_by": "{first.name}"'.encode() in data, data
    assert east.sent + west.sent == 1, (east.sent, west.sent)
    assert gw.router.states[first.name].hung_at is None
