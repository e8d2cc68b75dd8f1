"""qa36b-F4 (``kvgate serve``): llm-d's objective header ``x-llm-d-inference-objective`` (llm-d-router's
``metadata.ObjectiveKey``; GIE's ``x-gateway-inference-objective`` is its deprecated alias there) names the
request's objective as GIE's does, preferred where both name one, and is not forwarded to the model server.
Before: ignored (priority 0: a sheddable request at saturation was served) and forwarded. The gateway does
not scrape here, so its (reference) utilization detector reads the pool saturated: sheddable work gets 429.
``kvgate epp``: ``tests/extproc/test_llmd_objective_header_qa36b.py``."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.gateway.proxy import _filter_headers

LLMD = "x-llm-d-inference-objective"
GIE = "x-gateway-inference-objective"
OBJECTIVES = [{"name": "critical", "priority": 10}, {"name": "batch", "priority": -1}]


@pytest.mark.asyncio
async def test_the_llmd_objective_header_is_read_and_not_forwarded(backends: Any) -> None:
    (b,) = await backends(1)
    cfg = make_config([b.address], policy="reference", extra={"objectives": OBJECTIVES})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
        url = f"{base_url(gw)}/v1/completions"
        body = {"model": "m", "prompt": "hi", "max_tokens": 1}
        codes = []
        for sent in ({LLMD: "batch"}, {GIE: "critical", LLMD: "batch"}, {LLMD: "critical"},
                     {GIE: "batch", LLMD: "critical"}):  # fmt: skip
            async with http.post(url, json=body, headers=sent) as r:
                codes.append(r.status)
        assert codes == [429, 429, 200, 200]
    for _path, headers, _body in b.received:
        assert LLMD not in headers and GIE not in headers, headers


def test_the_objective_is_llmds_where_both_name_one() -> None:
    cases = [({LLMD: "a"}, "a"), ({GIE: "g", LLMD: "a"}, "a"), ({GIE: "g", LLMD: ""}, "g"), ({GIE: "g"}, "g"),
             ({}, None), ({LLMD: "a", "connection": LLMD}, None)]  # fmt: skip
    for sent, objective in cases:
        out, got, _, _, _ = _filter_headers(sent)
        assert LLMD not in out and got == objective, (sent, got)
