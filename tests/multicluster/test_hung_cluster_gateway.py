"""A hung cluster gateway (a wedged event loop, a stopped process: the kernel still accepts and ACKs, nothing
answers) does not hold requests to the read timeout (review s19-qa M3: 300 s, and ``round-robin`` kept
sending every other request there): a request waits for its response head at most ``head_timeout_s``, in
Parent mode also only until the cluster's aggregate (fresh when it was sent) has gone stale with its fetches
failing; either way it moves to the next cluster (nothing reached the client) and the hung cluster is left
out until an aggregate is fetched from it again. A stream that sends its head, then bytes further apart than
``head_timeout_s``, is not cut. Short bounds here; the QA's black-box test took ~95 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate, encode
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

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
        gw = GlobalGateway(cfg, policy, fetch=fetch, seed=1, drain_s=0.5)
        await gw.start("127.0.0.1", 0)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        await gw.stop()


async def _post(port: int, *, stream: bool = False) -> tuple[int | str, bytes]:
    raw = orjson.dumps({"model": "m", "prompt": "x", "stream": stream})
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%b"
            % (len(raw), raw))  # fmt: skip
    try:
        data = await asyncio.wait_for(r.read(), WAIT_S)
    except TimeoutError:
        return "hung", b""
    finally:
        w.close()
    return int(data.split(b" ", 2)[1]), data


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
    for _ in range(100):
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
    east, west = clusters
    specs = (ClusterSpec("east", gateway=east.address), ClusterSpec("west", gateway=west.address))
    # No aggregates fetched: only ``head_timeout_s`` tells the hung cluster.
    gw = await started(ClustersConfig(specs, head_timeout_s=0.5), "round-robin", fetch=False)
    east.freeze()
    res = [await _post(gw.port) for _ in range(2)]  # one of the two is sent to east first
    assert [s for s, _ in res] == [200, 200], res
    assert east.arrived == 1
    assert gw.router.states["east"].backoff_s > 0  # backs off: the next ones go to west
    # A stream whose chunks are further apart than the head bound (its head came at once) completes.
    west.gap_s = 0.8
    status, data = await _post(gw.port, stream=True)
    assert status == 200 and b"t2" in data and b"data: [DONE]" in data, data


async def test_a_request_sent_while_the_aggregate_was_stale_leaves_once_the_cluster_is_found_hung(
    clusters: tuple[ClusterGateway, ClusterGateway], started: Callable[..., Awaitable[GlobalGateway]],
) -> None:  # fmt: skip
    """The window the QA's run hit (review s19-qa M3, after the first fix): a request sent after the hung
    cluster's aggregate went stale but before a request sent earlier found it hung waited the whole
    ``head_timeout_s``. A stale aggregate alone does not end the wait (a cluster whose aggregate fails
    but that serves is waited for); the cluster found hung does."""
    east = clusters[0]
    specs = tuple(ClusterSpec(c.name, aggregate=c.aggregate, gateway=c.address) for c in clusters)
    gw = await started(ClustersConfig(specs, ttl_s=0.4, head_timeout_s=120.0), "round-robin", fetch=False)
    st = gw.router.states["east"]
    agg = PoolAggregate(name="east", snapshot_time=1.0, ready_endpoints=1, total_endpoints=1)
    st.set_aggregate(agg, time.monotonic() - 5.0)  # stale, its fetches failing
    st.fetch_error = "TimeoutError: "
    east.freeze()
    sent = [asyncio.create_task(_post(gw.port)) for _ in range(2)]  # round-robin: one of them to east
    for _ in range(200):
        if east.arrived:
            break
        await asyncio.sleep(0.01)
    assert east.arrived == 1
    done, pending = await asyncio.wait(sent, timeout=1.0)  # 5 checks (every ttl_s / 2): still waited for
    assert len(done) == 1 and len(pending) == 1, done
    st.hung_at = st.fetched_at  # as a request sent while it was fresh marks it
    res = await asyncio.wait_for(pending.pop(), 5.0)
    assert res[0] == 200 and b'"served_by": "west"' in res[1], res
