"""rev-f34-F1: ``kvgate epp`` with ``pendingHolders`` and Envoy's ``response_body_mode: NONE`` (served:
session.py refuses only GRPC/BUFFERED modes). A streamed 200's head is all the EPP sees: no first token, no
usage. ``_finish`` calls ``on_prefilled`` only when ``_first_token`` (set at the head for a non-streamed
reply, never for a stream), so the stream's pending pick is dropped at its ok finish and recorded nowhere:
with pendingHolders on and no response bodies, streamed traffic never enters the prefix index. The
non-streamed control passes (add64819 records it)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from kvgate.extproc import testing
from kvgate.extproc.testing import Exchange

from .conftest import StartEpp
from .test_pending_holders_epp_fam34 import POLICY, PROMPT, A, B, _held, _index

NONE_MODE = testing.pb.ProtocolConfiguration(
    request_body_mode=testing._MODE.FULL_DUPLEX_STREAMED, response_body_mode=testing._MODE.NONE
)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_200_under_response_body_mode_none_is_recorded(
    start_epp: StartEpp, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.setattr(testing, "PROTOCOL", NONE_MODE)
    epp = await start_epp([A, B], policy=str(POLICY))
    _, scorer = _index(epp)
    raw = orjson.dumps({"model": "m", "prompt": PROMPT + "first question", "max_tokens": 4, "stream": stream})
    headers = {":method": "POST", ":path": "/v1/completions", ":authority": "g", ":scheme": "http",
               "content-type": "application/json", "content-length": str(len(raw))}  # fmt: skip
    ctype = "text/event-stream" if stream else "application/json"
    async with Exchange(epp.stub) as ex:
        pod = (await ex.send_request(headers, raw)).destination
        assert pod in scorer._pending_at
        await ex.send_response_headers(200, {"content-type": ctype}, served=pod)
    for _ in range(3000):  # (30 s: the stream's close reaches the session's finish)
        if epp.picker.calls.finished:
            break
        await asyncio.sleep(0.01)
    assert len(epp.picker.calls.finished) == 1 and epp.picker.calls.finished[0][3]  # ok: a 200
    assert _held(epp, pod) == 23, f"stream={stream}: a 200 the engine served, recorded nowhere"
