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

from fake_time import FakeTime
from gateway.backend import Backend
from kvgate.httpfront.budget import ByteBudget
from kvgate.multicluster.clusters import ClustersConfig, ClustersError, ClusterSpec, parse
from kvgate.multicluster.epp_client import EppStream
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
        for _ in range(600):  # the gateway cancelled both streams (the EPP's sessions end; 30 s: 5 s before)
            if epp.cancelled == 2:
                break
            await asyncio.sleep(0.05)
        assert epp.cancelled == 2
    finally:
        await gw.stop()
        await server.stop(0)
        for b in (pod, parent, other):
            await b.stop()


def _on_fake_time(gw: GlobalGateway) -> FakeTime:
    fake = FakeTime()
    gw.router.epp.clock, gw.router.epp.sleep = fake.clock, fake.sleep
    return fake


async def _post_seen(gw: GlobalGateway, tokens: int, seen: asyncio.Event, events: int) -> bytes:
    """A streamed request; ``seen`` is set once the client has ``events`` whole events."""
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    raw = b""
    async with aiohttp.ClientSession() as http, http.post(url, data=_body(True, tokens)) as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            raw += chunk
            if raw.count(b"\n\n") >= events:
                seen.set()
    return raw


class _BufferingEpp(_StallingEpp):
    """A healthy EPP that holds every response line it rewrites and answers them all at end_of_stream,
    as ext_proc allows. ``lines_seen``: the response lines it was sent."""

    lines_seen = 0

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        async def counted() -> AsyncIterator[pb.ProcessingRequest]:
            async for msg in request_iterator:
                self.lines_seen += msg.response_body.body.count(b"\n")
                yield msg

        held = b""
        async for resp in super().Process(counted(), context):
            if resp.WhichOneof("response") != "response_body":
                yield resp
                continue
            streamed = resp.response_body.response.body_mutation.streamed_response
            held += streamed.body
            if streamed.end_of_stream:
                yield _body_response(held, True)


async def _until(cond: Any) -> None:
    for _ in range(int(LIMIT / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached")


async def test_an_epp_that_answers_at_the_end_of_stream_is_not_stalled() -> None:
    """ext_proc lets an EPP buffer its answers: before its first answered line, lines it holds have no
    deadline (its write deadline and the end of stream's still apply)."""
    pod = await Backend("pod", tokens=8).start()
    pod.pause_after = 3  # 4 events to the EPP, then the pod is silent until the test says
    epp = _BufferingEpp(pod.address, None)
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"), epp_timeout_s=2.0)
    fake = _on_fake_time(gw)
    try:
        post = asyncio.ensure_future(_post_seen(gw, 8, asyncio.Event(), 1))
        await asyncio.wait_for(pod.paused.wait(), LIMIT)
        await _until(lambda: epp.lines_seen >= 8)  # the EPP holds 4 events' lines, answering none
        fake.advance(20.0)  # ten deadlines
        await asyncio.sleep(0.2)  # (the deadline's watch runs)
        pod.resume.set()
        raw = await asyncio.wait_for(post, LIMIT)
        events = _events(raw)
        assert [e["choices"][0]["text"] for e in events] == [f"pod-{i} " for i in range(8)]
        assert {e["model"] for e in events} == {"m"} and raw.endswith(b"data: [DONE]\n\n")
        metrics = await _scrape(gw)
        assert "kvgate_multicluster_epp_stalled_total{" not in metrics
        assert 'kvgate_multicluster_epp_failed_midstream_total{cluster="c1"}' not in metrics
        assert gw.router.epp.ledgers.used == 0  # every ledger byte given back to the budget
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


@pytest.mark.parametrize("stalls", [False, True])
async def test_a_slow_pod_is_not_a_stalled_epp(stalls: bool) -> None:
    """The deadline runs only while the EPP owes an answer: a pod silent for longer (a slow token) is not
    the EPP's fault, and the stream keeps going through it. The same silence with an EPP that stopped
    answering (``stalls``): the deadline passes, the stream goes on from the pod. On the fake clock."""
    pod = await Backend("pod", tokens=4).start()
    pod.pause_after = 1  # silent after 2 events
    # Stalling: it answers the first 2 events' lines (4), none after.
    epp = _StallingEpp(pod.address, "response_body" if stalls else None, lines_ok=4)
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"), epp_timeout_s=2.0)
    fake = _on_fake_time(gw)
    try:
        seen = asyncio.Event()
        post = asyncio.ensure_future(_post_seen(gw, 4, seen, 2))
        await asyncio.wait_for(pod.paused.wait(), LIMIT)
        await asyncio.wait_for(seen.wait(), LIMIT)  # the EPP's answers for 2 events reached the client
        fake.advance(20.0)  # ten deadlines of the pod's silence, the EPP owing nothing
        await asyncio.sleep(0.2)  # (the deadline's watch runs)
        pod.resume.set()
        for _ in range(int(LIMIT / 0.05) if stalls else 0):  # the EPP owes the next lines: past due
            if post.done():
                break
            fake.advance(20.0)
            await asyncio.sleep(0.05)
        raw = await asyncio.wait_for(post, LIMIT)
        assert raw.endswith(b"data: [DONE]\n\n")
        assert [e["choices"][0]["text"] for e in _events(raw)] == [f"pod-{i} " for i in range(4)]
        assert {e["model"] for e in _events(raw)} == {"m"}
        metrics = await _scrape(gw)
        assert _stalls(metrics, "response_body") == (1.0 if stalls else 0.0)
        lost = 'kvgate_multicluster_epp_failed_midstream_total{cluster="c1"} 1.0' in metrics
        assert lost == stalls
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_a_json_reply_past_the_shared_ledger_budget_is_cut_when_the_epp_stalls() -> None:
    """The ledgers of all requests share one byte budget: a reply past it keeps none, and a failed EPP
    then cuts the response (as a reply over ``LEDGER_BYTES`` does) instead of it being finished here."""
    pod = await Backend("pod", tokens=5).start()
    epp = _StallingEpp(pod.address, "response_body", lines_ok=-1)
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"))
    gw.router.epp.ledgers = ByteBudget(100)  # less than the reply
    try:
        with pytest.raises(aiohttp.ClientPayloadError):
            await _post(gw, False, 5)
        metrics = await _scrape(gw)
        assert _stalls(metrics, "response_body") == 1.0
        assert 'kvgate_multicluster_responses_cut_total{cluster="c1"} 1.0' in metrics
        assert gw.router.epp.ledgers.used == 0
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


class _UnreadCall:
    """A call whose half-close never completes (the EPP stopped reading); writes go through."""

    cancelled = False

    async def write(self, msg: Any) -> None:
        pass

    async def done_writing(self) -> None:
        await asyncio.Event().wait()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


async def test_a_half_close_the_epp_never_takes_counts_as_a_stall() -> None:
    """The response's end (not rewritten): an EPP that takes no half-close in its deadline is a stall."""
    call = _UnreadCall()
    stream = EppStream(call, timeout_s=0.05, clock=time.monotonic, address="pod")  # type: ignore[arg-type]
    await stream._end(b"")
    assert stream.stalled == "response_body" and call.cancelled


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


@pytest.mark.parametrize("answers", [False, True])
async def test_an_epp_that_never_answers_the_end_of_a_stream_not_rewritten_is_a_stall(answers: bool) -> None:
    """Not rewritten, the client's bytes never wait for the EPP; but the request's accounting there ends
    only with its answer to the end of stream. One that reads everything and never answers is failed by
    ``epp_timeout_s`` (its stream cancelled, counted), not left open until a later cancel; a healthy one
    (``answers``) is not. The deadline on the fake clock: it passes only when the test moves it."""
    pod = await Backend("pod", tokens=6, chunk_delay=0.01).start()
    epp = _StallingEpp(pod.address, None if answers else "response_body", lines_ok=-1, rewrite=False)
    server, port = await _scripted(epp)
    # 5 s: the real-time waits (pick, writes) never pass it here, and the old cancel (5 x) is past LIMIT.
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"), epp_timeout_s=5.0)
    fake = _on_fake_time(gw)
    try:
        r, raw = await _post(gw, True, 6)
        assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n")  # the client never waited for it
        assert [e["choices"][0]["text"] for e in _events(raw)] == [f"pod-{i} " for i in range(6)]
        assert epp.stalled.is_set() != answers
        await asyncio.sleep(0.2)
        assert epp.cancelled == 0 and _stalls(await _scrape(gw), "response_body") == 0.0  # not yet due
        fake.advance(5.0)
        if answers:
            await asyncio.sleep(0.5)
            assert epp.cancelled == 0 and _stalls(await _scrape(gw), "response_body") == 0.0
        else:
            await _until(lambda: epp.cancelled == 1)  # the EPP's session ends: the request is released
            assert _stalls(await _scrape(gw), "response_body") == 1.0
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_a_json_reply_finished_without_the_epp_is_held_under_the_shared_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An EPP that fails at the response headers of a rewritten JSON reply: the gateway holds the reply
    whole to put the model back, and that buffer takes from the budget all relays share. Past it, the
    reply is cut (never a short body) with a log line saying why, and nothing stays taken."""
    pod = await Backend("pod", tokens=5).start()
    epp = _StallingEpp(pod.address, "response_headers")
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"))
    try:
        r, raw = await _post(gw, False, 5)  # within the budget: finished here, the model put back
        assert r.status == 200 and orjson.loads(raw)["model"] == "m"
        assert gw.router.epp.ledgers.used == 0
        gw.router.epp.ledgers = ByteBudget(100)  # less than the reply
        with pytest.raises(aiohttp.ClientPayloadError):
            await _post(gw, False, 5)
        metrics = await _scrape(gw)
        assert _stalls(metrics, "response_headers") == 2.0
        assert 'kvgate_multicluster_responses_cut_total{cluster="c1"} 1.0' in metrics
        assert gw.router.epp.ledgers.used == 0
        assert "shared buffer budget (100 bytes) is spent" in caplog.text
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


async def test_the_end_of_stream_wait_does_not_keep_the_stream_and_its_body() -> None:
    """While the gateway waits (in the background, up to ``epp_timeout_s``) for a stalled EPP's answer to
    the end of a stream, it holds the call only: the ``EppStream`` and the request body it carries are
    collected at once, not kept for the deadline (many large bodies would pile up behind one stalled EPP)."""
    import gc
    import weakref

    pod = await Backend("pod", tokens=6, chunk_delay=0.01).start()
    epp = _StallingEpp(pod.address, "response_body", lines_ok=-1, rewrite=False)
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"), epp_timeout_s=5.0)
    fake = _on_fake_time(gw)
    client = gw.router.epp
    opened: list[weakref.ref[EppStream]] = []
    real_open = client.open

    async def open_and_watch(*args: Any, **kwargs: Any) -> EppStream:
        stream = await real_open(*args, **kwargs)
        opened.append(weakref.ref(stream))
        return stream

    client.open = open_and_watch  # type: ignore[method-assign]
    try:
        r, raw = await _post(gw, True, 6)
        assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n")
        assert len(opened) == 1 and epp.stalled.is_set()
        await asyncio.sleep(0.2)
        assert epp.cancelled == 0  # the end-of-stream wait is still pending (the fake clock has not moved)
        for _ in range(20):  # (the request's own frames unwind within a few loop turns)
            gc.collect()
            if opened[0]() is None:
                break
            await asyncio.sleep(0.05)
        assert opened[0]() is None, [type(x).__name__ for x in gc.get_referrers(opened[0]())]
        fake.advance(5.0)  # the wait still ends the stalled stream, counted, without the object
        await _until(lambda: epp.cancelled == 1)
        assert _stalls(await _scrape(gw), "response_body") == 1.0
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()
