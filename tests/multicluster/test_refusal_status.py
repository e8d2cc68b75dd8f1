"""When no cluster starts a request, the client gets the status the clusters refused it with
(``kvgate.multicluster.router.no_route``): every cluster's remote EPP refusing with 413 gives 413 (was
503) with that EPP's own error body, any 429 among the refusals gives 429 with the smallest
``Retry-After`` the 429s gave (was always 1), and 503 (retryable) for the rest: a refusal beside a
cluster that failed (unreachable, 5xx, stalled) is no answer, the failed cluster may be the one that
would take it (review s13-doors M2). Real gRPC and HTTP on loopback: real ``kvgate epp`` servers in
Endpoint mode, loopback pods in Parent mode."""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from gateway.backend import free_port
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.epp_client import RETRY_AFTER_MAX_S, retry_after_s
from kvgate.multicluster.router import Attempt, no_route
from kvgate.multicluster.serve import GlobalGateway

BODY = orjson.dumps({"model": "m", "prompt": "x" * 200, "max_tokens": 1})


@pytest.fixture
async def epps() -> AsyncIterator[Callable[..., Any]]:
    """``make(pod_address, max_request_body)``: a started ``kvgate epp`` over one pod; its port."""
    started: list[EppServer] = []

    async def make(pod: str, max_request_body: int = 64 << 20) -> int:
        store = EndpointStore.from_addresses([pod])
        ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                             clock=time.monotonic, max_request_body=max_request_body)  # fmt: skip
        epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
        await epp.start()
        started.append(epp)
        return epp.port

    yield make
    for epp in started:
        await epp.stop(0)


async def _post(gw: GlobalGateway) -> tuple[int, dict[str, Any], dict[str, str]]:
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
        return r.status, orjson.loads(await r.read()), dict(r.headers)


async def test_every_clusters_epp_refusing_413_gives_the_client_413(pods, epps, global_gateway) -> None:
    pod = await pods()
    a, b = await epps(pod.address, 100), await epps(pod.address, 100)
    gw = await global_gateway(ClusterSpec("a", epp=f"127.0.0.1:{a}"), ClusterSpec("b", epp=f"127.0.0.1:{b}"))
    status, body, _ = await _post(gw)
    assert status == 413, body  # was 503: "every cluster failed (last: epp status 413)"
    # The EPP's own error, as through ``kvgate epp`` (was a generic message; the code is the one every door
    # gives a 413 since review s17-qa L6).
    assert body["error"]["code"] == "request_too_large", body
    assert body["error"]["message"] == "request body exceeds 100 bytes", body
    assert not pod.received


async def test_a_413_and_a_clusters_429_give_429(pods, epps, global_gateway) -> None:
    pod, busy = await pods(), await pods()
    busy.mode = "error429"
    small = await epps(pod.address, 100)
    gw = await global_gateway(
        ClusterSpec("a", epp=f"127.0.0.1:{small}"), ClusterSpec("b", gateway=busy.address)
    )
    status, body, headers = await _post(gw)
    assert status == 429, body  # was 503: not every cluster said "at capacity"
    assert headers.get("Retry-After") == "1"  # (the busy pod gave none)
    assert body["error"]["message"].startswith("cluster b at capacity"), body  # not "every cluster"


async def test_a_413_beside_an_unreachable_cluster_is_a_retryable_503(pods, epps, global_gateway) -> None:
    """Cluster a (down now) may be the one with the larger body cap: a retry may succeed (was 413)."""
    pod = await pods()
    small = await epps(pod.address, 100)
    gone = f"127.0.0.1:{free_port()}"
    gw = await global_gateway(ClusterSpec("a", gateway=gone), ClusterSpec("b", epp=f"127.0.0.1:{small}"))
    status, body, _ = await _post(gw)
    assert status == 503, body
    message = body["error"]["message"]
    assert "cluster b refused (413)" in message and "cluster a: unreachable" in message, message


async def _busy_cluster(retry_after: str, **headers: str) -> tuple[web.AppRunner, str]:
    """A Parent-mode cluster that answers every request 429 with this ``Retry-After`` (and ``headers``): its
    runner, address."""

    async def busy(_r: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "rate limit"}}, status=429, headers={"Retry-After": retry_after, **headers}
        )

    app = web.Application()
    app.router.add_post("/v1/completions", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def test_a_tenants_rate_limit_429_is_the_clients_answer_not_the_clusters_health(pods, global_gateway):
    """A cluster gateway's 429 marked ``x-envoy-ratelimited`` (kvgate serve's tenant limit, Envoy's rate-limit
    filters) refuses this client by policy: passed to the client as any 4xx, not re-sent to another cluster
    (which would give the tenant its limit once per cluster), and the cluster is not backed off for every
    other tenant (review s18-qa M4: one tenant over its limit took the cluster out of rotation)."""
    runner, limited = await _busy_cluster("7", **{"x-envoy-ratelimited": "true"})
    try:
        free = await pods()
        clusters = ClusterSpec("lim", gateway=limited), ClusterSpec("free", gateway=free.address)
        gw = await global_gateway(*clusters)
        got = [await _post(gw) for _ in range(6)]
        statuses = [status for status, _, _ in got]
        # Round robin alternates: lim's answers are its 429s, passed on with its Retry-After.
        assert sorted(statuses) == [200] * 3 + [429] * 3, statuses
        assert all(h.get("Retry-After") == "7" for status, _, h in got if status == 429), got
        assert len(free.received) == 3  # none of lim's requests went on to free
        lim = gw.router.states["lim"]
        assert lim.available(gw.router.clock()) and lim.failures == 0
    finally:
        await runner.cleanup()


async def test_a_clusters_retry_after_reaches_the_client(global_gateway) -> None:
    """A Parent-mode cluster's 429 with ``Retry-After: 30`` beside an unreachable cluster: the client gets
    30 (was always 1, so clients came back 30x too early)."""
    runner, busy = await _busy_cluster("30")
    try:
        gone = f"127.0.0.1:{free_port()}"
        gw = await global_gateway(ClusterSpec("a", gateway=busy), ClusterSpec("b", gateway=gone))
        status, body, headers = await _post(gw)
        assert status == 429, body
        assert headers.get("Retry-After") == "30", headers
    finally:
        await runner.cleanup()


async def test_a_clusters_unreadable_retry_after_is_one_refusal_not_a_500(pods, global_gateway) -> None:
    """Review s13-fixes D1: a cluster's 429 with a Retry-After ``int`` refuses (5,000 digits, past
    CPython's int-string limit) is that cluster's refusal: the next cluster serves the request (was a
    500 whenever the busy cluster was tried first: the ValueError left the router)."""
    runner, busy = await _busy_cluster("9" * 5000)
    try:
        good = await pods()
        gw = await global_gateway(
            ClusterSpec("busy", gateway=busy), ClusterSpec("good", gateway=good.address)
        )
        statuses = [(await _post(gw))[0] for _ in range(4)]  # (round-robin: busy tried first twice)
        assert statuses == [200] * 4, statuses
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("given", ["99999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_clusters_retry_after_is_capped(global_gateway, given: str) -> None:
    """Review s13-fixes D3: a cluster's Retry-After of years (a huge delta, an HTTP date in 9999) reaches
    the client as ``RETRY_AFTER_MAX_S`` (was passed on as is)."""
    runner, busy = await _busy_cluster(given)
    try:
        gw = await global_gateway(ClusterSpec("a", gateway=busy))
        status, body, headers = await _post(gw)
        assert status == 429, body
        assert headers.get("Retry-After") == str(RETRY_AFTER_MAX_S) == "3600", headers
    finally:
        await runner.cleanup()


async def test_503_only_when_no_cluster_refused(pods, global_gateway) -> None:
    broken = await pods()
    broken.mode = "error500"
    gone = f"127.0.0.1:{free_port()}"
    gw = await global_gateway(ClusterSpec("a", gateway=gone), ClusterSpec("b", gateway=broken.address))
    status, body, _ = await _post(gw)
    assert status == 503, body
    assert body["error"]["type"] == "service_unavailable"


def test_the_rule() -> None:
    def at(cluster: str, status: int, retry_after: int | None = None) -> Attempt:
        outcome = f"epp status {status}" if status else "unreachable"
        return Attempt(cluster, "endpoint", "x", outcome, status, retry_after)

    assert no_route([]).status == 503
    assert no_route([at("a", 0), at("b", 503)]).status == 503
    assert no_route([at("a", 413), at("b", 413)]).status == 413
    assert no_route([at("a", 429), at("b", 429)]).status == 429
    assert no_route([at("a", 413), at("b", 429)]).status == 429
    assert no_route([at("a", 503), at("b", 429)]).status == 429
    assert no_route([at("a", 404), at("b", 413)]).status == 404  # every one refused: the first refusal
    # A refusal beside a failure (unreachable, 5xx, stalled) is retryable (was the refusal's status).
    assert no_route([at("a", 0), at("b", 404), at("c", 413)]).status == 503
    assert no_route([at("a", 503), at("b", 404)]).status == 503
    stalled = Attempt("a", "endpoint", "x", "epp stalled (pick)")
    assert no_route([stalled, at("b", 413)]).status == 503
    # Retry-After: the smallest the 429s gave, one that gave none counting as 1.
    assert no_route([at("a", 429, 30), at("b", 0)]).retry_after == 30
    assert no_route([at("a", 429, 30), at("b", 429, 10)]).retry_after == 10
    assert no_route([at("a", 429, 30), at("b", 429)]).retry_after == 1
    assert no_route([at("a", 429), at("b", 429)]).message == "every cluster is at capacity; retry later"


def test_retry_after_values() -> None:
    assert retry_after_s("30") == 30 and retry_after_s(" 0 ") == 0
    assert retry_after_s(None) is None and retry_after_s("soon") is None and retry_after_s("-5") is None
    later = email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120))
    assert 100 <= (retry_after_s(later) or 0) <= 121
    assert retry_after_s("3601") == RETRY_AFTER_MAX_S and retry_after_s("0" * 20 + "5") == 5
    assert retry_after_s("9" * 11) == RETRY_AFTER_MAX_S


@pytest.mark.parametrize(
    "value", ["9" * 5000, "\xb2", "\u0663\u00b9", "x" * 5000, "Fri, 31 Dec 99999 23:59:59 GMT"]
)
def test_retry_after_s_never_raises(value: str) -> None:
    """Review s13-fixes D1: documented "None if absent or unreadable"; was ValueError for the first three
    (``str.isdigit`` takes Latin-1 superscripts and other scripts' digits, ``int`` refuses them, and
    5,000 digits pass CPython's int-string limit)."""
    got = retry_after_s(value)
    assert got is None or 0 <= got <= RETRY_AFTER_MAX_S


class _BusyEpp(pb_grpc.ExternalProcessorServicer):
    """A remote EPP that sheds every request: ImmediateResponse 429 with ``retry-after`` (``raw``, 7 by
    default) and its error."""

    def __init__(self, raw: bytes = b"7") -> None:
        self.raw = raw

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        async for msg in request_iterator:
            if msg.WhichOneof("request") == "request_body" and msg.request_body.end_of_stream:
                header = base_pb2.HeaderValue(key="retry-after", raw_value=self.raw)
                yield pb.ProcessingResponse(
                    immediate_response=pb.ImmediateResponse(
                        status=http_status_pb2.HttpStatus(code=429),
                        headers=pb.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(header=header)]),
                        body=b'{"error": {"message": "shed", "type": "rate_limit", "code": "shed"}}',
                    )
                )
                return


@pytest.mark.parametrize(
    ("raw", "retry_after"),
    [
        (b"7", "7"),
        # Review s13-fixes D1: a remote EPP's Retry-After that is not UTF-8 is unreadable (1 s), not a
        # UnicodeDecodeError ending the request with a 500.
        (b"\xff7", "1"),
    ],
)
async def test_a_remote_epps_retry_after_reaches_the_client(
    global_gateway, raw: bytes, retry_after: str
) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(_BusyEpp(raw), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        gw = await global_gateway(ClusterSpec("a", epp=f"127.0.0.1:{port}"))
        status, body, headers = await _post(gw)
        assert status == 429, body
        assert headers.get("Retry-After") == retry_after, headers
    finally:
        await server.stop(0)
