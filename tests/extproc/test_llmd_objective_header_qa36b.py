"""qa36b-F4 (``kvgate epp``): llm-d's objective header ``x-llm-d-inference-objective`` (llm-d-router's
``metadata.ObjectiveKey``; GIE's ``x-gateway-inference-objective`` is its deprecated alias there) names the
request's objective as GIE's does, preferred where both name one (llm-d-router prefers its control headers
over their old aliases), and is removed before the model server as GIE's is. Before: ignored (priority 0:
a sheddable request at saturation was routed) and forwarded. Real gRPC, driven as Envoy drives it; the
store is never scraped, so the pool reads saturated and a sheddable request is refused with 429."""

from __future__ import annotations

import orjson
import pytest

from kvgate.extproc import keys
from kvgate.extproc.testing import Exchange

ADDRS = ["127.0.0.1:18001"]
LLMD = "x-llm-d-inference-objective"
GIE = "x-gateway-inference-objective"
BODY = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 1})


def _head(**extra: str) -> dict[str, str]:
    return {":method": "POST", ":path": "/v1/completions", "content-type": "application/json", **extra}


@pytest.mark.parametrize(
    ("sent", "priority"),
    [
        ({LLMD: "critical"}, 10),
        ({GIE: "batch", LLMD: "critical"}, 10),  # llm-d's name wins
        ({GIE: "critical", LLMD: ""}, 10),  # an empty one names none
        ({GIE: "critical"}, 10),
    ],
)
async def test_the_llmd_objective_header_sets_the_priority_and_is_removed(start_epp, sent, priority) -> None:  # type: ignore[no-untyped-def]
    epp = await start_epp(ADDRS, objectives={"critical": 10, "batch": -1})
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_head(**sent), BODY)
    assert out.status is None  # routed
    assert epp.picker.calls.requests[0].priority == priority
    assert all(k in out.mutation.removed for k in sent), out.mutation.removed


@pytest.mark.parametrize("sent", [{LLMD: "batch"}, {GIE: "critical", LLMD: "batch"}])
async def test_a_sheddable_llmd_objective_is_shed_at_saturation(start_epp, sent) -> None:  # type: ignore[no-untyped-def]
    epp = await start_epp(ADDRS, objectives={"critical": 10, "batch": -1})
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(_head(**sent), BODY)
    assert out.status == 429


def test_both_objective_headers_are_stripped() -> None:
    assert {keys.OBJECTIVE, keys.LLMD_OBJECTIVE} <= set(keys.STRIPPED_REQUEST_HEADERS)
