"""small35 (b): the global gateway's relay through a cluster's EPP (Endpoint mode, a model rewrite: every
pod chunk goes through the EPP, the client gets its lines) reads SSE line ends as the spec does: LF, CRLF
(also split between two chunks) and a lone CR. Before, it cut the EPP's output and counted lines at LF
only: a CR-only stream reached the client whole at its end (nothing before), its lines had no deadline (an
EPP that stopped answering mid-stream was waited on until the pod's end), and the fallback's ledger could
not be cut. Now each line goes out as the EPP answers it, and a stalled EPP's unanswered lines go on from
the pod, nothing lost or repeated. Real HTTP and gRPC on loopback; the EPP rewrites with kvgate's own
``SSEScanner``, as ``kvgate epp`` does. The lone-CR cases fail on the commit before this one."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.handler_server import serve_handler
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.openai.sse import SSEScanner
from multicluster.test_epp_stall import _body_response, _gateway, _scripted

LIMIT = 30.0  # any one state is waited for this long at most
EVENTS = 6  # the pod's events; it waits after the first ``EARLY`` until the test lets it go on
EARLY = 2
ENDS = {"lf": (b"\n",), "crlf": (b"\r\n",), "cr": (b"\r",), "crlf-split": (b"\r", b"\n")}


class _Pod:
    """An OpenAI-style stream whose lines end with ``end`` (written in ``end``'s pieces, so a split CRLF is
    two writes); after ``EARLY`` events it waits for ``go`` (and, given, for ``before_rest``)."""

    def __init__(self, end: tuple[bytes, ...]) -> None:
        self.end = end
        self.go = asyncio.Event()
        self.before_rest: asyncio.Event | None = None
        self.epp: _RewritingEpp | None = None  # (given: the early events in lockstep with its answers)
        self.waiting = asyncio.Event()  # it wrote its first events and waits for ``go``
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _line(self, resp: web.StreamResponse, line: bytes, lockstep: bool = False) -> None:
        """``lockstep`` (``epp`` given): each piece of the line end waits for the EPP's answer to it, so
        a split CRLF's LF reaches the EPP (and is answered) alone."""
        await resp.write(line)
        for piece in self.end:
            before = self.epp.answers if lockstep and self.epp is not None else None
            await resp.write(piece)
            if before is not None and self.epp is not None:
                await asyncio.wait_for(self.epp.answered_after(before), LIMIT)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(EVENTS):
            if i == EARLY:
                if self.before_rest is not None:
                    await self.before_rest.wait()
                    for j in range(EARLY, EVENTS - 1):  # (written, then the pod waits: the EPP owes them)
                        await self._event(resp, body["model"], j)
                self.waiting.set()
                await self.go.wait()
                if self.before_rest is not None:
                    await self._event(resp, body["model"], EVENTS - 1)
                    break
            await self._event(resp, body["model"], i)
        usage = {"prompt_tokens": 3, "completion_tokens": EVENTS, "total_tokens": 3 + EVENTS}
        await self._line(
            resp, b"data: " + orjson.dumps({"model": body["model"], "choices": [], "usage": usage})
        )
        await self._line(resp, b"")
        await self._line(resp, b"data: [DONE]")
        await self._line(resp, b"")
        await resp.write_eof()
        return resp

    async def _event(self, resp: web.StreamResponse, model: str, i: int) -> None:
        obj = {"model": model, "choices": [{"index": 0, "text": f"t{i} ", "finish_reason": None}]}
        await self._line(resp, b"data: " + orjson.dumps(obj), lockstep=i < EARLY)
        await self._line(resp, b"", lockstep=i < EARLY)

    async def start(self) -> _Pod:
        self.runner, self.port = await serve_handler(self.handle)
        return self

    async def stop(self) -> None:
        self.go.set()
        if self.runner is not None:
            await self.runner.cleanup()


class _RewritingEpp(pb_grpc.ExternalProcessorServicer):
    """Picks ``pod``, rewrites the model to ``m-v2`` and puts ``m`` back in each response line as it comes
    (``SSEScanner``, kvgate epp's reader). ``stall_after``: once it answered that many events it answers
    nothing of the next event nor after (still reading)."""

    def __init__(self, pod: str, stall_after: int | None = None) -> None:
        self.pod, self.stall_after = pod, stall_after
        self.answered = 0  # events answered
        self.answered_enough = asyncio.Event()  # ``stall_after`` events answered
        self.answers = 0  # response body messages answered
        self._answer = asyncio.Event()

    async def answered_after(self, before: int) -> None:
        """Until it answered more than ``before`` response body messages."""
        while self.answers <= before:
            self._answer.clear()
            await self._answer.wait()

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.ProcessingResponse]:
        scanner = SSEScanner(rewrite_to="m")
        body = b""
        stalled = False
        async for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if kind == "request_body":
                body += msg.request_body.body
                if not msg.request_body.end_of_stream:
                    continue
                dest = base_pb2.HeaderValue(key="x-gateway-destination-endpoint", raw_value=self.pod.encode())
                mutation = pb.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(header=dest)])
                yield pb.ProcessingResponse(
                    request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation))
                )
                yield _body_response(body.replace(b'"model":"m"', b'"model":"m-v2"'), True, request=True)
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                data = msg.response_body.body
                if stalled or (self.stall_after is not None and self.answered >= self.stall_after
                               and b"data:" in data):  # fmt: skip
                    stalled = True  # (from the next event on: the last one's line ends are answered)
                    continue  # stalled: reads on, answers nothing
                out = scanner.feed(data)
                eos = msg.response_body.end_of_stream
                if eos:
                    out += scanner.finish()
                if out or eos:
                    self.answered += out.count(b"data: {")
                    yield _body_response(out, eos)
                    self.answers += 1
                    self._answer.set()
                if self.stall_after is not None and self.answered >= self.stall_after:
                    self.answered_enough.set()
                if eos:
                    return


_EVENT_END = re.compile(rb"(?:\r\n|\r|\n){2}")


def _events(raw: bytes) -> list[dict[str, Any]]:
    """The data events the client got, its line ends read as the SSE spec reads them."""
    out = []
    for event in _EVENT_END.split(raw):
        for line in re.split(rb"\r\n|\r|\n", event):
            if line.startswith(b"data: {"):
                out.append(orjson.loads(line[6:]))
    return out


async def _stream(port: int, got: bytearray, seen: asyncio.Event, want: int) -> None:
    """A streamed request; ``got`` its bytes so far; ``seen`` set once it holds ``want`` events."""
    body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": EVENTS, "stream": True})
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r,
    ):
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_any():
            got += chunk
            if len(_events(bytes(got))) >= want:
                seen.set()


def _check_whole(raw: bytes) -> None:
    events = _events(raw)
    assert [e["choices"][0]["text"] for e in events if e["choices"]] == [f"t{i} " for i in range(EVENTS)], raw
    assert {e["model"] for e in events} == {"m"}, raw
    assert events[-1]["usage"]["completion_tokens"] == EVENTS
    assert raw.count(b"[DONE]") == 1
    # No line end repeated (a CRLF's LF sent twice is an empty line: an event dispatched early).
    lines = re.split(rb"\r\n|\r|\n", raw)[:-1]  # (the last: after the stream's last line end)
    assert all(a or b for a, b in itertools.pairwise(lines)), raw


async def _through(pod: _Pod, epp: _RewritingEpp, want: int, check: Any, **kw: float) -> None:
    """A streamed request through ``epp`` to ``pod``: once the pod waits, the client must hold ``want``
    events (``check`` then reads them), then the pod goes on and the whole stream is checked."""
    server, port = await _scripted(epp)
    gw = await _gateway(ClusterSpec("c1", epp=f"127.0.0.1:{port}"), **kw)
    got, seen = bytearray(), asyncio.Event()
    try:
        post = asyncio.ensure_future(_stream(gw.port, got, seen, want))
        await asyncio.wait_for(pod.waiting.wait(), LIMIT)
        await asyncio.wait_for(asyncio.shield(seen.wait()), LIMIT)  # (the pod still waits)
        check(_events(bytes(got)))
        pod.go.set()
        await asyncio.wait_for(post, LIMIT)
        _check_whole(bytes(got))
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()


@pytest.mark.parametrize("end", list(ENDS))
async def test_each_line_reaches_the_client_as_the_epp_answers_it(end: str) -> None:
    """The pod waits after its first events: the client has them (before: a lone-CR stream's lines were
    held to the pod's end)."""
    pod = await _Pod(ENDS[end]).start()

    def first(events: list[dict[str, Any]]) -> None:
        assert [e["model"] for e in events] == ["m"] * EARLY

    await _through(pod, _RewritingEpp(f"127.0.0.1:{pod.port}"), EARLY, first, epp_timeout_s=LIMIT * 4)


@pytest.mark.parametrize("end", list(ENDS))
async def test_lines_a_stalled_epp_owes_go_on_from_the_pod_once_each(end: str) -> None:
    """The EPP answers the first events, then stops answering while the pod waits with more lines sent:
    its deadline (0.5 s) fails it, and the client gets the lines it owed from the pod's ledger (before, a
    lone-CR stream's lines owed no deadline: all waited for the pod's end)."""
    pod = await _Pod(ENDS[end]).start()
    epp = _RewritingEpp(f"127.0.0.1:{pod.port}", stall_after=EARLY)
    pod.before_rest, pod.epp = epp.answered_enough, epp
    await _through(pod, epp, EVENTS - 1, lambda _events: None)


@pytest.mark.parametrize(
    ("chunks", "ends", "last"),
    [
        ([b"a\nb\n", b"c"], [2, 0], [4, 0]),
        ([b"a\r\nb\r", b"\nc\r\n"], [2, 1], [5, 4]),
        ([b"a\r", b"", b"\n", b"b\rc"], [1, 0, 0, 1], [2, 0, 1, 2]),
        ([b"a\rb\r\r", b"\r\n"], [3, 1], [5, 2]),
    ],
)
def test_line_ends_as_the_sse_spec_reads_them(chunks: list[bytes], ends: list[int], last: list[int]) -> None:
    from kvgate.openai.sse import LineEnds, line_end

    counter = LineEnds()
    assert [counter.count(c) for c in chunks] == ends
    assert [line_end(c) for c in chunks] == last
    joined = b"".join(chunks)
    assert sum(ends) == len(re.findall(rb"\r\n|\r|\n", joined))
