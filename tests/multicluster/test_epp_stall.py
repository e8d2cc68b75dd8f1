"""A remote EPP that stops answering without failing (issue #14): its deadline (``epp_timeout_s``).

A stalled EPP (a hung process, a wedged event loop) neither fails the ext_proc stream nor answers it. Each
message it must answer has ``epp_timeout_s``; one it leaves unanswered is handled as a failure: a pick
moves on (Parent mode in the same cluster, or the next cluster), a response goes on from the pod with the
model name put back by the gateway. Real gRPC and HTTP on loopback, with a scripted EPP that keeps
reading but stops answering at a chosen point.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClustersConfig, ClustersError, ClusterSpec, parse
from kvgate.multicluster.router import GlobalRouter
from kvgate.multicluster.serve import GlobalGateway

DEADLINE = 0.5  # the EPP's deadline in these tests; each waits well past it, bounded by LIMIT
LIMIT = 20.0  # a stream still open after this long has stalled with the EPP: the test fails


def _body(stream: bool, max_tokens: int) -> bytes:
    return orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": max_tokens, "stream": stream})


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]


def _body_response(data: bytes, eos: bool, *, request: bool = False) -> pb.ProcessingResponse:
    streamed = pb.StreamedBodyResponse(body=data, end_of_stream=eos)
    common = pb.CommonResponse(body_mutation=pb.BodyMutation(streamed_response=streamed))
    if request:
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))


class _StallingEpp(pb_grpc.ExternalProcessorServicer):
    """Picks ``pod`` and (``rewrite``) rewrites the model to ``m-v2``, putting ``m`` back in the response
    line by line, as kvgate's EPP does. ``stall_at``: ``pick``, ``response_headers``, ``response_body``
    (after answering ``lines_ok`` lines) or None (a healthy EPP). Stalled, it goes on reading every
    message (so gRPC flow control never blocks the gateway's writes) and answers none."""

    def __init__(self, pod: str, stall_at: str | None, *, lines_ok: int = 0, rewrite: bool = True) -> None:
        self.pod, self.stall_at, self.lines_ok, self.rewrite = pod, stall_at, lines_ok, rewrite
        self.stalled = asyncio.Event()
        self.streams = 0
        self.cancelled = 0  # streams the gateway cancelled (it gave up on this EPP)

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        self.streams += 1
        body, pending, answered = b"", b"", 0
        stalled = False
        try:
            async for msg in request_iterator:
                if stalled:
                    continue
                kind = msg.WhichOneof("request")
                if kind == "request_body":
                    body += msg.request_body.body
                    if not msg.request_body.end_of_stream:
                        continue
                    if self.stall_at == "pick":
                        stalled = True
                        self.stalled.set()
                        continue
                    dest = base_pb2.HeaderValue(
                        key="x-gateway-destination-endpoint", raw_value=self.pod.encode()
                    )
                    mutation = pb.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(header=dest)])
                    yield pb.ProcessingResponse(
                        request_headers=pb.HeadersResponse(
                            response=pb.CommonResponse(header_mutation=mutation)
                        )
                    )
                    sent = body.replace(b'"model":"m"', b'"model":"m-v2"') if self.rewrite else body
                    yield _body_response(sent, True, request=True)
                elif kind == "response_headers":
                    if self.stall_at == "response_headers":
                        stalled = True
                        self.stalled.set()
                        continue
                    yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
                elif kind == "response_body":
                    pending += msg.response_body.body
                    *lines, pending = pending.split(b"\n")
                    if self.stall_at == "response_body" and answered + len(lines) > self.lines_ok:
                        stalled = True
                        self.stalled.set()
                        continue
                    answered += len(lines)
                    out = b"".join(line.replace(b'"model":"m-v2"', b'"model":"m"') + b"\n" for line in lines)
                    if out:
                        yield _body_response(out, False)
                    if msg.response_body.end_of_stream:
                        yield _body_response(pending.replace(b'"model":"m-v2"', b'"model":"m"'), True)
                        return
            if stalled:
                await asyncio.Event().wait()  # half-closed by the gateway: still no answer
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def _scripted(epp: _StallingEpp) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(epp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _gateway(*clusters: ClusterSpec, epp_timeout_s: float = DEADLINE) -> GlobalGateway:
    cfg = ClustersConfig(tuple(clusters), epp_timeout_s=epp_timeout_s)
    gw = GlobalGateway(cfg, "active-passive", fetch=False)
    await gw.start("127.0.0.1", 0)
    return gw


async def _post(gw: GlobalGateway, stream: bool, tokens: int) -> tuple[aiohttp.ClientResponse, bytes]:
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=_body(stream, tokens)) as r:
        raw = await asyncio.wait_for(r.read(), LIMIT)
        return r, raw


async def _scrape(gw: GlobalGateway) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.port}/metrics") as r:
        return await r.text()


def _stalls(metrics: str, phase: str, cluster: str = "c1") -> float:
    key = f'kvgate_multicluster_epp_stalled_total{{cluster="{cluster}",phase="{phase}"}} '
    for line in metrics.splitlines():
        if line.startswith(key):
            return float(line[len(key) :])
    return 0.0


@pytest.mark.parametrize("stall_at", ["response_body", "response_headers"])
async def test_a_rewritten_stream_goes_on_from_the_pod_when_the_epp_stops_answering(stall_at: str) -> None:
    pod = await Backend("pod", tokens=12, chunk_delay=0.05).start()
    epp = _StallingEpp(pod.address, stall_at, lines_ok=7)  # body: 3 events and a half, then silence
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"))
    try:
        t0 = time.monotonic()
        r, raw = await _post(gw, True, 12)
        took = time.monotonic() - t0
        assert r.status == 200 and r.headers["x-kvgate-route-mode"] == "endpoint"
        assert epp.stalled.is_set()
        assert pod.received[-1][2]["model"] == "m-v2"  # the EPP did rewrite the request
        # Not cut, nothing lost or repeated, the client's model name on every event.
        assert raw.endswith(b"data: [DONE]\n\n") and b"error" not in raw
        events = _events(raw)
        assert [e["choices"][0]["text"] for e in events] == [f"pod-{i} " for i in range(12)]
        assert {e["model"] for e in events} == {"m"}
        assert took < LIMIT / 2  # the deadline (0.5 s) ended the wait, not the test's bound
        metrics = await _scrape(gw)
        assert _stalls(metrics, stall_at) == 1.0
        assert 'kvgate_multicluster_epp_failed_midstream_total{cluster="c1"} 1.0' in metrics
        assert 'kvgate_multicluster_responses_cut_total{cluster="c1"} 1.0' not in metrics
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_a_json_reply_whose_end_the_epp_never_answers_is_finished_from_the_pod() -> None:
    pod = await Backend("pod", tokens=5).start()
    epp = _StallingEpp(pod.address, "response_body", lines_ok=-1)  # silent from the first body message
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"))
    try:
        r, raw = await _post(gw, False, 5)
        assert r.status == 200
        reply = orjson.loads(raw)
        assert epp.stalled.is_set()
        assert reply["model"] == "m" and reply["usage"]["completion_tokens"] == 5
        assert reply["choices"][0]["text"] == " ".join(f"pod-{i}" for i in range(5))
        assert _stalls(await _scrape(gw), "response_body") == 1.0
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_a_stream_not_rewritten_goes_on_when_the_epp_stalls_at_the_response_headers() -> None:
    pod = await Backend("pod", tokens=6, chunk_delay=0.02).start()
    epp = _StallingEpp(pod.address, "response_headers", rewrite=False)
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"))
    try:
        r, raw = await _post(gw, True, 6)
        assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n")
        assert [e["choices"][0]["text"] for e in _events(raw)] == [f"pod-{i} " for i in range(6)]
        assert _stalls(await _scrape(gw), "response_headers") == 1.0
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_a_stalled_pick_falls_back_to_parent_mode_then_to_the_next_cluster() -> None:
    pod = await Backend("pod").start()
    parent = await Backend("parent").start()  # c1's cluster-local gateway
    other = await Backend("other").start()  # c2's
    epp = _StallingEpp(pod.address, "pick")
    server, port = await _scripted(epp)
    # The clusters file's deadline is long; c1's own (per cluster) is what applies to its EPP.
    c1 = ClusterSpec(
        "c1", epp=f"127.0.0.1:{port}", gateway=parent.address, priority=0, epp_timeout_s=DEADLINE
    )
    c1_epp_only = ClusterSpec("c1", epp=f"127.0.0.1:{port}", priority=0, epp_timeout_s=DEADLINE)
    c2 = ClusterSpec("c2", gateway=other.address, priority=1)
    gw = await _gateway(c1, c2, epp_timeout_s=LIMIT * 2)
    try:
        r, raw = await _post(gw, False, 3)
        assert r.status == 200 and r.headers["x-kvgate-cluster"] == "c1"
        assert r.headers["x-kvgate-route-mode"] == "parent"
        assert orjson.loads(raw)["choices"][0]["text"].startswith("parent-0")
        assert epp.stalled.is_set() and not pod.received  # the pod never got it

        gw.reload(ClustersConfig((c1_epp_only, c2), epp_timeout_s=LIMIT * 2))  # no Parent mode in c1
        r, raw = await _post(gw, False, 3)
        assert r.status == 200 and r.headers["x-kvgate-cluster"] == "c2"
        assert orjson.loads(raw)["choices"][0]["text"].startswith("other-0")
        metrics = await _scrape(gw)
        assert _stalls(metrics, "pick") == 2.0
        assert epp.streams == 2
        for _ in range(100):  # the gateway cancelled both streams (the EPP's sessions end)
            if epp.cancelled == 2:
                break
            await asyncio.sleep(0.05)
        assert epp.cancelled == 2
    finally:
        await gw.stop()
        await server.stop(0)
        for b in (pod, parent, other):
            await b.stop()


async def test_a_slow_pod_is_not_a_stalled_epp() -> None:
    """The deadline runs only while the EPP owes an answer: a pod silent for longer (a slow token) is not
    the EPP's fault, and the stream keeps going through it."""
    deadline = 1.0  # (a healthy EPP's answer on a loaded machine stays well inside it)
    pod = await Backend("pod", tokens=2, chunk_delay=2.5 * deadline).start()
    epp = _StallingEpp(pod.address, None)
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"), epp_timeout_s=deadline)
    try:
        r, raw = await _post(gw, True, 2)
        assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n")
        assert [e["choices"][0]["text"] for e in _events(raw)] == [f"pod-{i} " for i in range(2)]
        assert {e["model"] for e in _events(raw)} == {"m"}
        metrics = await _scrape(gw)
        assert "kvgate_multicluster_epp_stalled_total{" not in metrics
        assert 'kvgate_multicluster_epp_failed_midstream_total{cluster="c1"}' not in metrics
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


def test_the_epp_deadline_is_read_from_the_clusters_file_and_applied_on_reload() -> None:
    doc = {"epp_timeout_s": 1.5, "clusters": [{"name": "a", "epp": "h:1"}, {"name": "b", "epp": "h:2",
                                                                          "epp_timeout_s": 4}]}  # fmt: skip
    cfg = parse(doc)
    assert cfg.epp_timeout_s == 1.5
    assert [c.epp_timeout_s for c in cfg.clusters] == [None, 4.0]
    assert parse({"clusters": [{"name": "a", "epp": "h:1"}]}).epp_timeout_s == 2.0  # the default
    for bad in (0, -1, "soon"):
        with pytest.raises(ClustersError, match="epp_timeout_s"):
            parse({"epp_timeout_s": bad, "clusters": [{"name": "a", "epp": "h:1"}]})
        with pytest.raises(ClustersError, match=r"clusters\[0\]\.epp_timeout_s"):
            parse({"clusters": [{"name": "a", "epp": "h:1", "epp_timeout_s": bad}]})
    router = GlobalRouter(cfg, "round-robin")
    assert router.epp.timeout_s == 1.5
    router.apply(parse({**doc, "epp_timeout_s": 7}))
    assert router.epp.timeout_s == 7.0
