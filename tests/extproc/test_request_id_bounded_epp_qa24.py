"""qa24 F6, the ext_proc door: ``kvgate epp`` replaces a client's ``x-request-id`` over 256 characters or
with a character outside printable ASCII by a generated one (the header mutation sets it upstream), as it
generates one when there is none; before, it passed it on (``tests/gateway/test_request_id_bounded_qa24.py``
for ``kvgate serve``). The exchange over real gRPC, as Envoy drives it."""

from __future__ import annotations

import orjson
import pytest

from kvgate.extproc import keys
from kvgate.extproc.testing import Exchange

BODY = {"model": "m", "prompt": "x", "max_tokens": 1}


@pytest.mark.parametrize("rid", ["a" * 257, "id\x7fdel"])
async def test_epp_replaces_an_unacceptable_request_id(start_epp, rid: str) -> None:
    epp = await start_epp(["127.0.0.1:18001"])
    h = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
    h[keys.REQUEST_ID] = rid
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(h, orjson.dumps(BODY))
    new = out.mutation.set_headers.get(keys.REQUEST_ID, "")
    assert len(new) == 32 and epp.picker.calls.requests[0].request_id == new
