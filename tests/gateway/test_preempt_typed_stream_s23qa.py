"""Review s23-qa F7 (the reviewer's test ``test_qa23_preempt_typed_stream.py``, adapted; fixed by fixqa23a).

``kvgate serve`` keeps a sheddable typed stream (Responses API, Anthropic Messages) preemptible until its
first *output* event, but its 200 head and opening event (``response.created`` / ``message_start``, which
vLLM sends before the prefill) are relayed at once. Preempted in that window, the handler was cancelled
inside the relay: the upstream was closed and the critical request served, but the sheddable client's
response was never ended (no 429, no error event, no close: a hang past ``idleTimeoutSeconds``), and it
was counted ``client_gone``. Now the preemption aborts the upstream and the relay ends the stream with
the API's 429 error event and a clean end, counted ``429``, its accounting released once.

Chat keeps its rule (its first byte is its first token: preemptible only before the head, a 429): the
last case shows the doors' other path unchanged (it passes before the fix too).

The model server is a loopback aiohttp app: the sheddable request's opening event at once, then nothing
(a long prefill) until the gateway aborts it; the critical request's whole answer at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from flowcontrol.test_preemption_doors import gateway_config
from gateway.conftest import request_errors
from gateway.handler_server import serve_app
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer

WAIT = 10.0


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


_RESP = {"id": "resp_1", "object": "response", "model": "m", "status": "in_progress", "output": []}
_MSG = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 0}}  # fmt: skip
# Per API: the events sent before the prefill, then the answer's (output, end).
OPENING = {
    "/v1/responses": event("response.created", {"response": _RESP}),
    "/v1/messages": event("message_start", {"message": _MSG}) + event("ping", {}),
    "/v1/chat/completions": b"",  # (vLLM's role chunk comes with the first token)
}
ANSWER = {
    "/v1/responses": event(
        "response.output_text.delta", {"delta": "hi", "output_index": 0, "content_index": 0}
    )
    + event("response.completed", {"response": {**_RESP, "status": "completed"}}),
    "/v1/messages": event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    + event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    + event("message_stop", {}),
    "/v1/chat/completions": b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
}


def body_for(path: str, who: str) -> dict[str, Any]:
    if path == "/v1/responses":
        return {"model": "m", "input": who, "stream": True}
    return {"model": "m", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": who}]}


class Backend:
    """The three APIs on one loopback server; ``arrivals`` / ``aborted``: who came, who was aborted."""

    def __init__(self) -> None:
        self.arrivals: list[str] = []
        self.aborted: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Backend:
        app = web.Application()
        for path in OPENING:
            app.router.add_post(path, self._answer)
        self.runner, self.port = await serve_app(app, access_log=None, shutdown_timeout=0.5)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        who = body["input"] if "input" in body else body["messages"][0]["content"]
        self.arrivals.append(who)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        if OPENING[request.path] or who != "batch":
            await resp.prepare(request)
            await resp.write(OPENING[request.path])
        if who == "batch":  # a long prefill, until the gateway drops the connection (aiohttp's handler
            # is not cancelled when its client goes: the transport says it)
            await until(lambda: request.transport is None or request.transport.is_closing(), "not aborted")
            self.aborted.append(who)
            return resp
        await resp.write(ANSWER[request.path])
        await resp.write_eof()
        return resp


async def until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages", "/v1/chat/completions"])
async def test_a_sheddable_stream_preempted_after_its_opening_event_ends_with_the_apis_error(
    path: str,
) -> None:
    backend = await Backend().start()
    gw: GatewayServer | None = None
    try:
        cfg = parse_gateway_config(gateway_config(backend.port, model="m"))
        pools = [build_pool(p) for p in cfg.pools]
        gw = GatewayServer(cfg, pools, scrape=False)
        await gw.start()
        url = f"http://127.0.0.1:{gw.port}{path}"
        opened = asyncio.Event()

        async def send(who: str) -> tuple[int, bytes, str]:
            hdrs = {"x-gateway-inference-objective": who}
            async with http.post(url, json=body_for(path, who), headers=hdrs) as r:
                first = b""
                if who == "batch" and OPENING[path]:
                    first = await r.content.readuntil(b"\n\n")  # the opening event reached the client
                opened.set()
                try:
                    return r.status, first + await r.read(), "clean"
                except aiohttp.ClientPayloadError as e:
                    return r.status, first, f"cut: {e!r}"

        async with aiohttp.ClientSession() as http:
            batch = asyncio.ensure_future(send("batch"))
            await until(lambda: backend.arrivals == ["batch"], "the batch request never reached the server")
            if OPENING[path]:
                await asyncio.wait_for(opened.wait(), WAIT)
            crit = await asyncio.wait_for(send("critical"), WAIT)
            assert crit[0] == 200 and crit[2] == "clean" and crit[1].endswith(ANSWER[path]), crit
            try:
                status, raw, how = await asyncio.wait_for(batch, WAIT)
            except TimeoutError:
                raise AssertionError(
                    f"the preempted {path} client got no end in {WAIT:g} s after the critical request was "
                    "served (its 200 head and opening event had been relayed)"
                ) from None
        await until(lambda: backend.aborted == ["batch"], "the preempted request was not aborted upstream")
        director = pools[0].director
        await until(lambda: director.store.all()[0].inflight.requests == 0, "a charge was not released")
        errors = {k[2]: v for k, v in request_errors(gw).items() if v}
        assert errors == {"429": 1}, errors  # (not ``client_gone``: the status its client is told)
        if not OPENING[path]:  # chat: stopped before its head, the 429 itself
            assert status == 429 and b"preempted" in raw, (status, raw)
            return
        assert status == 200 and how == "clean", (status, how, raw)
        assert raw.startswith(OPENING[path][: OPENING[path].index(b"\n\n") + 2]), raw
        last = raw.replace(b"\r\n", b"\n").rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        if path == "/v1/messages":  # Anthropic's error event (as vLLM's /v1/messages ends a failed stream)
            assert last.startswith(b"event: error\ndata: "), last
            data = orjson.loads(last.split(b"data: ", 1)[1])
            assert data["type"] == "error" and data["error"]["type"] == "rate_limit_error", data
            assert "preempted" in data["error"]["message"], data
        else:  # the OpenAI error event the openai SDK raises on (status 429)
            assert last.startswith(b"data: "), last
            error = orjson.loads(last.removeprefix(b"data: "))["error"]
            assert error["code"] == "rate_limit_exceeded" and "preempted" in error["message"], error
    finally:
        if gw is not None:
            await gw.stop(drain_timeout=0.5)
        await backend.stop()


def test_the_epp_door_cannot_stop_a_typed_stream_once_its_response_headers_are_answered() -> None:
    """``kvgate epp``, the same case: it can tell Envoy only at its next answer, so it stops a request only
    until it answers the response headers (a 429 then); after them (the opening ``message_start`` passing)
    its ``stop`` says False, the director passes over it, and the stream goes on to its end: no hang, no
    half-told client. (A check of the other door; it passes before the fix too.)"""
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from extproc.test_preemption_session import Registering, response_headers
    from kvgate.extproc.session import Session, SessionContext
    from kvgate.extproc.testing import header_map
    from kvgate.openai.request import RequestPolicy

    d = Registering()
    ep = d.pick(None).endpoints[0]  # type: ignore[arg-type]
    policy = RequestPolicy(objectives={"batch": -1, "critical": 10})
    s = Session(SessionContext(d, lambda: {ep.address: ep}, clock=time.monotonic, policy=policy))
    h = {":method": "POST", ":path": "/v1/messages", "x-gateway-inference-objective": "batch"}
    assert s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(h)))) == []
    body = orjson.dumps(body_for("/v1/messages", "batch"))
    out = s.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    assert out and out[0].HasField("request_headers") and len(d.stops) == 1  # dispatched, offered
    (out,) = response_headers(s)
    assert out.HasField("response_headers")
    opening = OPENING["/v1/messages"]
    out = s.handle(pb.ProcessingRequest(response_body=pb.HttpBody(body=opening, end_of_stream=False)))
    assert all(not o.HasField("immediate_response") for o in out), out
    assert not d.stops[0]()  # too late for a 429: not stopped
    rest = s.handle(
        pb.ProcessingRequest(response_body=pb.HttpBody(body=ANSWER["/v1/messages"], end_of_stream=True))
    )
    assert all(not o.HasField("immediate_response") for o in rest), rest
    s.close()
    assert d.finished == 1
