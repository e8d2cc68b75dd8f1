"""Review s26-qa F7 (``kvgate epp``): the header mutation removes llm-d's fairness header as it removes GIE's;
the request's flow is still read from it. Before: ``removed`` lacked ``x-llm-d-inference-fairness-id`` (the
model server got the tenant id). Real gRPC, driven as Envoy drives it."""

from __future__ import annotations

import orjson

from kvgate.extproc import keys
from kvgate.extproc.testing import Exchange
from kvgate.flowcontrol.controller import flow_of

ADDRS = ["127.0.0.1:18001", "127.0.0.1:18002"]
LLMD = "x-llm-d-inference-fairness-id"


async def test_the_llmd_fairness_header_is_removed_and_read(start_epp) -> None:  # type: ignore[no-untyped-def]
    epp = await start_epp(ADDRS)
    h = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json", LLMD: "tenant-7"}
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(h, orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 1}))
    assert LLMD in out.mutation.removed and keys.FAIRNESS_ID not in out.mutation.removed
    assert flow_of(epp.picker.calls.requests[0]) == "tenant-7"
