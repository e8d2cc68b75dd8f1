"""s26-rev-fixqa26b F1: kvgate serve's ``_filter_headers`` folds llm-d's fairness header into the fairness id
unless GIE's is "absent or the default flow" -- but an *empty* GIE header is neither, so it wins as "" and
the request's flow becomes ``default-flow`` (``fairness or DEFAULT_FAIRNESS_ID``), where ``flow_key`` (the
rule the commit claims to follow, the EPP door's and the rate limiter's) names llm-d's id. Before 9cff7f95
the llm-d header stayed in ``req.headers`` and ``flow_of`` named the llm-d tenant: this passes on
903cb16b's src and fails at f76859c4."""

from __future__ import annotations

import pytest

from kvgate.flowcontrol.controller import flow_key, flow_of
from kvgate.gateway.proxy import _filter_headers
from kvgate.openai.protocol import DEFAULT_FAIRNESS_ID
from kvgate.scheduling.types import InferenceRequest


@pytest.mark.parametrize(
    ("gie", "llmd"),
    [("", "tenant-a"), (None, "tenant-a"), ("default-flow", "tenant-a"), ("gie-t", "tenant-a"), ("", None)],
)
def test_gateway_flow_matches_flow_key(gie: str | None, llmd: str | None) -> None:
    h = {"content-type": "application/json"}
    if gie is not None:
        h["x-gateway-inference-fairness-id"] = gie
    if llmd is not None:
        h["x-llm-d-inference-fairness-id"] = llmd
    out, _obj, fairness, _e, _t = _filter_headers(h)
    # as kvgate serve builds the request (openai/request.py: ``fairness or DEFAULT_FAIRNESS_ID``)
    fid = fairness or DEFAULT_FAIRNESS_ID
    req = InferenceRequest(request_id="r", model="m", fairness_id=fid, headers=out)
    assert flow_of(req) == flow_key(gie, llmd)
