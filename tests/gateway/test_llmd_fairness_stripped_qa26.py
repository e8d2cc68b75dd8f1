"""Review s26-qa F7 (``kvgate serve``): llm-d's fairness header is read and not forwarded to the model server,
as GIE's ``x-gateway-inference-fairness-id`` is not (the reference strips the fairness header it reads).
Before: the flow was read from it and the header forwarded, so a tenant id the edge set for routing reached
the model server (and its logs). The flow it names is ``flow_key``'s (llm-d's unless absent, empty or the
default flow, else GIE's: rev-c36 F3; GIE's first before).
``kvgate epp``: ``tests/extproc/test_llmd_fairness_stripped_qa26.py``.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.flowcontrol.controller import flow_key
from kvgate.gateway.proxy import _filter_headers

LLMD = "x-llm-d-inference-fairness-id"
GIE = "x-gateway-inference-fairness-id"


async def test_the_llmd_fairness_header_is_not_forwarded(backends: Any) -> None:
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as http:
        body = {"model": "m", "prompt": "hi", "max_tokens": 1}
        async with http.post(f"{base_url(gw)}/v1/completions", json=body, headers={LLMD: "tenant-7"}) as r:
            assert r.status == 200
    headers = b.received[-1][1]
    assert LLMD not in headers and GIE not in headers, headers


def test_the_flow_is_read_as_before() -> None:
    """The fairness id the request carries names the same flow as both headers did."""
    cases = [({LLMD: "t"}, "t"), ({GIE: "g", LLMD: "t"}, "t"), ({GIE: "g", LLMD: ""}, "g"),
             ({GIE: "default-flow", LLMD: "t"}, "t"),
             ({GIE: "g"}, "g"), ({}, "default-flow"),
             ({LLMD: "t", "connection": LLMD}, "default-flow")]  # fmt: skip
    for sent, flow in cases:
        out, _, fairness, _, _ = _filter_headers(sent)
        assert LLMD not in out and flow_key(fairness, out.get(LLMD)) == flow, (sent, fairness)
