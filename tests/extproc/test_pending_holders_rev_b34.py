"""Review rev-b34 on ``pendingHolders`` (fam34), ``kvgate epp``'s part. F2: a client that leaves after the
stream's 200 head (vLLM sends it before prefill) and before the first token ends the session with
``ok`` (status 200): no token came, so no holder may be left (docs/scheduling.md). F4b: Envoy fell back
to the other address of the list: the served pod's first token records the blocks there (they were
recorded nowhere). Real gRPC on loopback: the test plays Envoy; the pods are never dialled."""

from __future__ import annotations

import asyncio
import time

import orjson

from kvgate.extproc.testing import Exchange

from .conftest import StartEpp
from .test_pending_holders_epp_fam34 import POLICY, PROMPT, A, B, _held, _index, _request


async def test_F2_a_client_gone_after_the_head_before_the_first_token_leaves_no_holder(
    start_epp: StartEpp,
) -> None:
    epp = await start_epp([A, B], policy=str(POLICY))
    _, scorer = _index(epp)
    headers, raw = _request(PROMPT + "first question")
    async with Exchange(epp.stub) as ex:
        pod = (await ex.send_request(headers, raw)).destination
        assert pod in scorer._pending_at
        await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served=pod)
        ex.cancel()  # the client left: Envoy cancels the stream
    deadline = time.monotonic() + 30  # (the EPP finishes the session when it sees the cancel: wait for it)
    for _ in range(10**6):
        if epp.picker.calls.finished or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert len(epp.picker.calls.finished) == 1 and epp.picker.calls.first_token == []
    assert epp.picker.calls.finished[0][3]  # (the session's verdict: ok, status 200)
    assert _held(epp, A) == _held(epp, B) == 0 and not scorer._pending and not scorer._pending_at


async def test_F4b_the_served_pod_of_envoys_fallback_holds_the_blocks(start_epp: StartEpp) -> None:
    epp = await start_epp([A, B], policy=str(POLICY))
    _, scorer = _index(epp)
    headers, raw = _request(PROMPT + "first question")
    async with Exchange(epp.stub) as ex:
        pod = (await ex.send_request(headers, raw)).destination
        other = B if pod == A else A
        await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served=other)
        chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "text": "Hi"}]}
        await ex.send_response_chunk(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await ex.read()
        assert (_held(epp, other), _held(epp, pod)) == (23, 0)
        await ex.send_response_chunk(b"data: [DONE]\n\n", end_of_stream=True)
        await ex.read()
    assert [(e, ok) for _, e, _, ok in epp.picker.calls.finished] == [(pod, False), (other, True)]
    assert (_held(epp, other), _held(epp, pod)) == (23, 0) and not scorer._pending
