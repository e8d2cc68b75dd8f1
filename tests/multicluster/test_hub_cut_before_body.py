"""Review s21-mc H1: the hub EPP's cut at ``limits.requestTimeoutSeconds`` of an event stream whose response
headers were answered but whose first body chunk Envoy has not sent yet (a queued or hung model server:
vLLM sends its SSE head before the first token). In FULL_DUPLEX_STREAMED Envoy then waits on no body answer
(``ProcessorState::getCallbackStateAfterHeaderResp``: ``StreamedBodyCallback`` only once a body chunk was
sent), so an unasked ``response_body`` is "spurious": Envoy closes the ext_proc stream and lets the rest
pass unprocessed, the client waits on with no bound. Only an ``ImmediateResponse`` is taken in any state
(``Filter::onReceiveMessage``); Envoy resets the started stream. Over real ext_proc gRPC."""

from __future__ import annotations

import orjson

from multicluster.test_hub_request_timeout import HEADERS, SSE, _hub, _until


async def test_an_event_stream_cut_before_any_body_chunk_is_an_immediate_response() -> None:
    async with _hub(0.6) as (_director, west, health, ex):
        await ex.send_request(HEADERS, orjson.dumps({"model": "m", "prompt": "p", "stream": True}))
        await ex.send_response_headers(200, SSE)
        reply = await ex.read()  # (no body chunk sent: the model server is silent after its head)
        kind = reply.WhichOneof("response")
        assert kind == "immediate_response", (
            f"unasked {kind} while Envoy waits on no body answer: Envoy counts it spurious and drops the EPP "
            "for the rest of the request (the bound is lost)"
        )
        assert reply.immediate_response.status.code == 504
        error = orjson.loads(reply.immediate_response.body)["error"]
        assert error["code"] == "request_timeout", error
        assert "cluster west: the answer was cut at the bound" in error["message"], error
        assert west.backoff_s > 0  # (no progress at all: charged)
        assert health.probes == 0  # (a head came: the gateway answered)
        await _until(lambda: west.inflight == 0, "the cut request is still in flight")
