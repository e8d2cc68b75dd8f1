"""rev-d34 F2: ``kvgate epp`` with ``pendingHolders``: a 200 reply read whole that the EPP does not hold
(larger than ``max_buffered_response``, or the shared response budget spent) passes through with its
usage unread. Since ea623b17 an ``ok`` finish without usage drops the pending pick, so the blocks the engine
computed are recorded nowhere (before: recorded at the finish). The control (small reply) records them.
Since the fix, the EPP tells the director the prefill ran (``on_prefilled``) before the finish.
A streamed 200 whose client left before its first token still records nothing (rev-b34 F2's test)."""

from __future__ import annotations

import orjson
import pytest

from kvgate.extproc.testing import Exchange

from .conftest import StartEpp
from .test_pending_holders_epp_fam34 import POLICY, PROMPT, A, B, _held, _index


def _whole_request(prompt: str) -> tuple[dict[str, str], bytes]:
    raw = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 4})  # (not streamed)
    headers = {":method": "POST", ":path": "/v1/completions", ":authority": "g", ":scheme": "http",
               "content-type": "application/json", "content-length": str(len(raw))}  # fmt: skip
    return headers, raw


@pytest.mark.parametrize("limit", [16 << 20, 64])  # (default; a reply larger than the limit)
async def test_a_whole_200_reply_records_the_prefill_it_ran(start_epp: StartEpp, limit: int) -> None:
    epp = await start_epp([A, B], policy=str(POLICY), max_buffered_response=limit)
    _, scorer = _index(epp)
    headers, raw = _whole_request(PROMPT + "first question")
    body = orjson.dumps(
        {
            "id": "c",
            "object": "text_completion",
            "model": "m",
            "choices": [
                {"index": 0, "text": "Hi there, a long enough answer " * 4, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 400, "completion_tokens": 4, "total_tokens": 404},
        }
    )
    async with Exchange(epp.stub) as ex:
        pod = (await ex.send_request(headers, raw)).destination
        assert pod in scorer._pending_at
        await ex.send_response_headers(200, {"content-type": "application/json"}, served=pod)
        await ex.send_response_chunk(body[:100])
        if limit == 64:
            await ex.read()  # (past the limit: the EPP forwards what it held and passes the rest)
        await ex.send_response_chunk(body[100:], end_of_stream=True)
        await ex.read()
    assert len(epp.picker.calls.finished) == 1 and epp.picker.calls.finished[0][3]  # ok: a 200
    assert _held(epp, pod) == 23, "the engine ran this prefill (a 200), the index records it nowhere"
