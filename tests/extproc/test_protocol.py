"""The ext_proc exchange over real gRPC, driven message by message as Envoy drives it."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.extproc import keys
from kvgate.extproc.testing import Exchange, header_map
from kvgate.openai.protocol import CODES
from kvgate.requestcontrol.director import named

ADDRS = ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"]


def _headers(**extra: str) -> dict[str, str]:
    base = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
    return {**base, **extra}


def _body(model: str = "m", prompt: str = "hello world", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "prompt": prompt, "max_tokens": 8, **extra})


async def test_body_split_across_many_chunks(start_epp) -> None:
    epp = await start_epp(ADDRS)
    body = _body(prompt="x" * 5000)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), body, chunk_size=7)
    assert out.immediate is None
    assert out.mutation.clear_route_cache
    assert out.destination in ADDRS
    # Header and metadata must carry the same value.
    assert out.metadata_destination == out.destination
    assert out.body == body
    # Unchanged body: no content-length rewrite needed.
    assert "content-length" not in out.mutation.set_headers
    assert epp.picker.calls.requests[0].prompt_text == "x" * 5000
    assert epp.picker.calls.requests[0].model == "m"


async def test_invalid_json_is_400_with_openai_error(start_epp) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), b'{"model": "m", "prompt": ', chunk_size=5)
    assert out.status == 400 and out.immediate is not None
    err = orjson.loads(out.immediate.body)["error"]
    assert "JSON" in err["message"]
    assert epp.picker.calls.dispatched == []


async def test_missing_model_is_400(start_epp) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), orjson.dumps({"prompt": "hi"}))
    assert out.status == 400 and out.immediate is not None
    assert "model" in orjson.loads(out.immediate.body)["error"]["message"]
    headers = {h.header.key: h.header.raw_value for h in out.immediate.headers.set_headers}
    assert headers["content-type"] == b"application/json"


async def test_subset_hint_restricts_the_pick(start_epp) -> None:
    # (pods on distinct IPs: a hint names pods by IP, as the reference; test_subset_hint_by_ip_qa32b.py)
    pods = ["127.0.0.11:18001", "127.0.0.12:18002", "127.0.0.13:18003"]
    epp = await start_epp(pods)
    for _ in range(6):
        async with Exchange(epp.stub) as ex:
            out = await ex.send_request(_headers(), _body(), subset=[pods[1], "10.9.9.9:1"])
            await ex.send_response(200, {"content-type": "application/json"}, [b"{}"])
        assert out.destination == pods[1]


@pytest.mark.parametrize("subset", [[], ["10.9.9.9:8000"]])
async def test_subset_hint_empty_or_none_eligible_is_503(start_epp, subset: list[str]) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), _body(), subset=subset)
    assert out.status == 503
    assert epp.picker.calls.dispatched == []


async def test_fallback_list_in_header_and_metadata(start_epp) -> None:
    epp = await start_epp(ADDRS, fallbacks=2)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), _body())
    parts = out.destination.split(",")
    assert len(parts) == 2 and len(set(parts)) == 2 and set(parts) <= set(ADDRS)
    assert out.metadata_destination == out.destination


async def test_control_headers_read_and_stripped_and_request_id_generated(start_epp) -> None:
    epp = await start_epp(ADDRS, objectives={"batch": -1, "critical": 5})
    h = _headers(**{keys.FAIRNESS_ID: "tenant-a", keys.OBJECTIVE: "critical",
                    keys.DESTINATION_ENDPOINT: "6.6.6.6:80"})  # fmt: skip
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(h, _body())
    req = epp.picker.calls.requests[0]
    assert req.fairness_id == "tenant-a"
    assert req.priority == 5
    for k in (keys.FAIRNESS_ID, keys.OBJECTIVE, keys.DESTINATION_ENDPOINT):
        assert k in out.mutation.removed
    # The client's destination header never wins: the EPP's choice overwrites it.
    assert out.destination in ADDRS
    assert len(out.mutation.set_headers[keys.REQUEST_ID]) == 32
    assert req.request_id == out.mutation.set_headers[keys.REQUEST_ID]

    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(**{keys.REQUEST_ID: "abc"}), _body())
    assert keys.REQUEST_ID not in out.mutation.set_headers  # the client's goes upstream as it is
    # The picker tracks by an id of its own, unique even when clients reuse theirs (qa34a F1); the
    # client's stays in the request's headers (the director's log lines name the request by it).
    async with Exchange(epp.stub) as ex:
        await ex.send_request(_headers(**{keys.REQUEST_ID: "abc"}), _body())
    first, again = epp.picker.calls.requests[1:3]
    assert first.request_id not in ("abc", again.request_id, req.request_id)
    assert first.headers[keys.REQUEST_ID] == again.headers[keys.REQUEST_ID] == "abc"
    assert named(first) == "abc" and named(req) == req.request_id
    assert first.fairness_id == keys.DEFAULT_FAIRNESS_ID


async def test_bodyless_request_gets_endpoint_on_headers(start_epp) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(
            {":method": "GET", ":path": "/v1/models", "x-gateway-model-name": "m"}, None
        )
        assert out.destination in ADDRS
        assert out.body == b""
        await ex.send_response_headers(200, {"content-type": "application/json"}, end_of_stream=True)
    assert len(epp.picker.calls.finished) == 1 and epp.picker.calls.finished[0][3] is True


async def test_220kb_prompt_rechunked_at_62000(start_epp) -> None:
    epp = await start_epp(ADDRS)
    body = _body(prompt="p" * 220_000)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), body)
    assert out.body == body
    assert max(out.chunk_sizes) == keys.MAX_BODY_CHUNK
    assert sum(out.chunk_sizes) == len(body)
    assert len(out.chunk_sizes) == -(-len(body) // keys.MAX_BODY_CHUNK)


async def test_request_trailers_end_the_body(start_epp) -> None:
    epp = await start_epp(ADDRS)
    body = _body()
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), body, chunk_size=4, trailers={"x-trailer": "1"})
    assert out.body == body and out.destination in ADDRS


async def test_model_rewrite_header_rewrites_body_and_response(start_epp) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(**{keys.MODEL_REWRITE: "m-v2"}), _body(model="m"))
        sent = orjson.loads(out.body)
        assert sent["model"] == "m-v2"
        assert out.mutation.set_headers["content-length"] == str(len(out.body))
        assert keys.MODEL_REWRITE in out.mutation.removed
        assert epp.picker.calls.requests[0].model == "m-v2"
        reply = orjson.dumps(
            {"model": "m-v2", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        )
        resp = await ex.send_response(
            200,
            {"content-type": "application/json", "content-length": str(len(reply))},
            [reply[:10], reply[10:]],
        )
    assert orjson.loads(resp.body)["model"] == "m"
    assert "content-length" in resp.mutation.removed


async def test_configured_rewrite_and_sse_model_put_back(start_epp) -> None:
    epp = await start_epp(ADDRS, model_rewrite=lambda m: "lora-b" if m == "m" else None)
    events = [b'data: {"model":"lora-b","choices":[{"text":"a"}]}\n\n',
              b'data: {"model":"lora-b","choices":[{"text":"b"}]}\n\ndata: [DONE]\n\n']  # fmt: skip
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), _body(model="m", stream=True))
        assert orjson.loads(out.body)["model"] == "lora-b"
        resp = await ex.send_response(
            200, {"content-type": "text/event-stream"}, [events[0][:20], events[0][20:], events[1]]
        )
    text = resp.body.decode()
    assert text.count('"model":"m"') == 2 and "lora-b" not in text
    assert text.endswith("data: [DONE]\n\n")


async def test_response_buffering_counts_usage(start_epp) -> None:
    epp = await start_epp(ADDRS)
    reply = orjson.dumps({"model": "m", "choices": [{"text": "abc"}],
                          "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                    "prompt_tokens_details": {"cached_tokens": 4}}})  # fmt: skip
    async with Exchange(epp.stub) as ex:
        await ex.send_request(_headers(), _body())
        await ex.send_response_headers(200, {"content-type": "application/json"})
        # A non-streamed reply is held until its end: nothing comes back for the first pieces.
        await ex.send_response_chunk(reply[:5])
        await ex.send_response_chunk(reply[5:9])
        await ex.send_response_chunk(reply[9:], end_of_stream=True)
        chunks = [c async for c in ex.response_body()]
    assert len(chunks) == 1 and chunks[0] == (reply, True)
    (_rid, _addr, usage, ok) = epp.picker.calls.finished[0]
    assert ok
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 7)
    assert epp.metrics.completion_tokens._value.get() == 7
    assert epp.metrics.cached_tokens._value.get() == 4


async def test_sse_usage_split_across_body_messages(start_epp) -> None:
    epp = await start_epp(ADDRS)
    stream = (b'data: {"model":"m","choices":[{"delta":{"content":"hi"}}]}\n\n'
              b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":9}}\n\n'
              b"data: [DONE]\n\n")  # fmt: skip
    pieces = [stream[i : i + 13] for i in range(0, len(stream), 13)]
    async with Exchange(epp.stub) as ex:
        await ex.send_request(_headers(), _body(stream=True))
        await ex.send_response_headers(200, {"content-type": "text/event-stream"})
        # Streaming passes straight through: each piece comes back before the next is sent.
        for piece in pieces[:-1]:
            await ex.send_response_chunk(piece)
            msg = await ex.read()
            assert msg.response_body.response.body_mutation.streamed_response.body == piece
        await ex.send_response_chunk(pieces[-1], end_of_stream=True)
        rest = [c async for c in ex.response_body()]
    assert rest[-1] == (pieces[-1], True)
    assert len(epp.picker.calls.first_token) == 1
    usage = epp.picker.calls.finished[0][2]
    assert (usage.prompt_tokens, usage.completion_tokens) == (21, 9)


async def test_error_status_counts_as_failure(start_epp) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        await ex.send_request(_headers(), _body())
        await ex.send_response(503, {"content-type": "application/json"}, [b'{"error":"x"}'])
    assert epp.picker.calls.finished[0][3] is False
    assert epp.picker.calls.first_token == []


async def test_served_endpoint_moves_inflight_accounting(start_epp) -> None:
    epp = await start_epp(ADDRS, fallbacks=2)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), _body())
        primary, second = out.destination.split(",")
        await ex.send_response_headers(200, {"content-type": "application/json"}, served=second)
        assert epp.store.get(primary).inflight.requests == 0
        assert epp.store.get(second).inflight.requests == 1
        await ex.send_response_chunk(b"{}", end_of_stream=True)
        _ = [c async for c in ex.response_body()]
    assert [(a, ok) for _r, a, _u, ok in epp.picker.calls.finished] == [(primary, False), (second, True)]
    assert all(epp.store.get(a).inflight.requests == 0 for a in ADDRS)


async def test_cancelled_stream_releases_inflight(start_epp) -> None:
    epp = await start_epp(ADDRS)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), _body(stream=True))
        await ex.send_response_headers(200, {"content-type": "text/event-stream"})
        await ex.send_response_chunk(b'data: {"choices":[{"text":"a"}]}\n\n')
        await ex.read()
        assert epp.store.get(out.destination).inflight.requests == 1
        ex.cancel()
    for _ in range(200):
        if epp.picker.calls.finished:
            break
        await _tick()
    assert len(epp.picker.calls.finished) == 1
    assert epp.picker.calls.finished[0][3] is True  # the server answered 200; the client left
    assert epp.store.get(out.destination).inflight.requests == 0


async def test_conformance_hooks_only_when_enabled(start_epp) -> None:
    wanted = {keys.TEST_ENDPOINT_SELECTION: "127.0.0.1:18003"}
    off = await start_epp(ADDRS)
    async with Exchange(off.stub) as ex:
        out = await ex.send_request(_headers(**wanted), _body())
        m = await ex.send_response_headers(200, {"content-type": "application/json"}, served=out.destination)
    assert keys.CONFORMANCE_SERVED not in m.set_headers
    assert off.picker.calls.requests[0].subset is None  # the header is ignored: the whole pool is eligible
    # ... and hidden from the picker's own header-based-testing-filter.
    assert keys.TEST_ENDPOINT_SELECTION not in off.picker.calls.requests[0].headers

    on = await start_epp(ADDRS, conformance=True)
    for _ in range(3):
        async with Exchange(on.stub) as ex:
            out = await ex.send_request(_headers(**wanted), _body())
            assert out.destination == "127.0.0.1:18003"
            m = await ex.send_response_headers(
                200, {"content-type": "application/json"}, served=out.destination
            )
        assert m.set_headers[keys.CONFORMANCE_SERVED] == "127.0.0.1:18003"
    # A bare IP selects every port on that host.
    async with Exchange(on.stub) as ex:
        out = await ex.send_request(_headers(**{keys.TEST_ENDPOINT_SELECTION: "127.0.0.1"}), _body())
    assert out.destination in ADDRS


async def test_oversized_body_is_refused(start_epp) -> None:
    epp = await start_epp(ADDRS, max_request_body=1000)
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_headers(), _body(prompt="z" * 5000), chunk_size=400)
    assert out.status == 413
    # One code for one refusal in every door (review s17-qa L6: the EPP said ``payload_too_large``, kvgate
    # serve and --clusters ``request_too_large``, the shared table's; no upstream JSON code to follow).
    err = orjson.loads(out.immediate.body)["error"]
    assert (
        (err["type"], err["code"])
        == ("invalid_request_error", CODES[413])
        == ("invalid_request_error", "request_too_large")
    )


async def _tick() -> None:
    await asyncio.sleep(0.01)


async def test_response_too_large_to_hold_passes_through(start_epp) -> None:
    epp = await start_epp(ADDRS, max_buffered_response=100)
    reply = b"x" * 180
    async with Exchange(epp.stub) as ex:
        await ex.send_request(_headers(), _body())
        await ex.send_response_headers(200, {"content-type": "application/json"})
        await ex.send_response_chunk(reply[:60])
        await ex.send_response_chunk(reply[60:120])  # over the bound: what was held is released
        first = await ex.read()
        assert first.response_body.response.body_mutation.streamed_response.body == reply[:120]
        await ex.send_response_chunk(reply[120:], end_of_stream=True)
        rest = [c async for c in ex.response_body()]
    assert rest == [(reply[120:], True)]
    (_rid, _addr, usage, ok) = epp.picker.calls.finished[0]
    assert ok and usage is None


async def test_streams_beyond_the_limit_are_refused(start_epp) -> None:
    import grpc

    epp = await start_epp(ADDRS, max_concurrent_streams=1)
    async with Exchange(epp.stub) as held:
        await held.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(_headers()))))
        for _ in range(500):  # until the server has taken the first stream
            if epp.metrics.streams._value.get() == 1:
                break
            await _tick()
        # The server refuses the call itself; no message is written, since a write racing the
        # refusal fails locally with INTERNAL ("Failed execute_batch") instead of the real status.
        refused = epp.stub.Process()
        try:
            assert await asyncio.wait_for(refused.code(), 10) == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            refused.cancel()
        # The held stream still completes normally.
        body = pb.HttpBody(body=_body(), end_of_stream=True)
        await held.write(pb.ProcessingRequest(request_body=body))
        out = await held.read_request_outcome(True)
        assert out.destination in ADDRS


async def test_requests_in_flight_steer_the_next_picks(start_epp) -> None:
    """Dispatch is charged at once, so requests still in flight spread the following ones (no timing)."""
    epp = await start_epp(ADDRS)
    exchanges = [Exchange(epp.stub) for _ in range(6)]
    dests = []
    for i, ex in enumerate(exchanges):
        await ex.__aenter__()
        out = await ex.send_request(_headers(), _body(prompt=f"distinct prompt {i} " * 30))
        dests.append(out.destination)
    assert len(set(dests)) >= 2
    assert sum(epp.store.get(a).inflight.requests for a in ADDRS) == 6
    for ex in exchanges:
        ex.cancel()
        await ex.close()
    for _ in range(300):
        if len(epp.picker.calls.finished) == 6:
            break
        await _tick()
    assert all(epp.store.get(a).inflight.requests == 0 for a in ADDRS)
