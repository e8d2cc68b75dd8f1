"""s27-qa Q5: ``kvgate epp``'s idle sweeper (``--stream-idle-timeout``, 600 s) cancelled the ext_proc stream
of a request that was routed and waited for its model server's answer.

Between the routing answer and the answer's response headers Envoy sends the EPP nothing: for a non-streamed
generation that is the whole generation (a long reasoning answer, a deep queue at the server). Once that
outlasted the idle timeout the EPP cancelled the stream (``DEADLINE_EXCEEDED``) and Envoy (the reference's
FailClose) answered the client a 500 when the answer came: the generation lost, not retryable by then.
Upstream's EPP has no sweeper at all. Now a stream whose request is with its model server is never idle
(``server._idle_from``); the sweeper still ends a stream silent where the EPP waits on Envoy (the request's
rest: ``test_epp_limits``; a started answer: ``test_outcome_counts``). Shown with the timeout at 2 s: the
answer's headers 5 s after the pick are served. Fails on ed8eb86d (``RPC already finished``: the stream
was swept)."""

from __future__ import annotations

import asyncio
import time

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel
from kvgate.openai.request import RequestPolicy

HEADERS = {":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw", ":scheme": "http",
           "content-type": "application/json"}  # fmt: skip
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "think hard"}]})


async def test_a_routed_request_waiting_for_its_answer_is_not_swept() -> None:
    store = EndpointStore.from_addresses(["127.0.0.1:9"])  # never dialled: Envoy's side is played here
    director = build_epp_director(None, store, policy="round-robin", clock=time.monotonic)
    metrics = EppMetrics()
    ctx = SessionContext(
        director, lambda: {e.address: e for e in store.all()}, clock=time.monotonic, observer=metrics,
        policy=RequestPolicy(objectives={}),
    )  # fmt: skip
    opts = ServerOptions(
        host="127.0.0.1", port=0, health_port=None, metrics_port=None, stream_idle_timeout_s=2.0
    )
    server = EppServer(ctx, opts, metrics=metrics, ready=lambda: True)
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=60) as ex:
            picked = await ex.send_request(HEADERS, BODY)
            assert picked.destination == "127.0.0.1:9"
            await asyncio.sleep(5.0)  # > 2 idle timeouts: the model server generates, Envoy sends nothing
            answer = b'{"id":"c","object":"chat.completion","choices":[],"usage":{"completion_tokens":1}}'
            out = await ex.send_response(
                200, {"content-type": "application/json"}, [answer], served="127.0.0.1:9"
            )
            assert out.body == answer
        assert server.servicer is not None and server.servicer.idle_closed == 0
    finally:
        await ch.close()
        await server.stop(0)
