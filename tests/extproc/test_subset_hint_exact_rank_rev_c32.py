"""rev-c32 F1: a subset hint entry naming a KNOWN endpoint's ``ip:port`` exactly (one data-parallel rank)
keeps that rank alone; the GIE protocol: "the EPP MUST only select endpoints from the specified list".
kvgate's hub (multicluster, Endpoint mode) names the rank that answered a Responses create to pin its
follow-up there: on a DP pod each rank is its own vLLM server with its own response store, and another rank
answers 404 when the cluster EPP does not know the id itself (restarted, id evicted). b6eeceab widened such
an entry to every rank on the IP (fails there); a Service port or a bare IP still widens (qa32b Q1's test).
Distinct loopback IPs stand for the pods; nothing is contacted."""

from __future__ import annotations

import orjson
import pytest

from kvgate.extproc.testing import Exchange

PODS = ["127.0.0.7:8000", "127.0.0.7:8001", "127.0.0.8:8000"]  # one pod with two DP ranks, and a second pod
H_RESP = {":method": "POST", ":path": "/v1/responses", "content-type": "application/json"}
H_COMP = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
FOLLOW_UP = orjson.dumps({"model": "m", "input": "and then?", "previous_response_id": "resp_not_known_here"})
COMPLETION = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})


@pytest.mark.parametrize(
    ("headers", "body"), [(H_RESP, FOLLOW_UP), (H_COMP, COMPLETION)], ids=["follow-up", "plain"]
)
async def test_a_hint_naming_one_known_rank_keeps_that_rank(start_epp, headers, body) -> None:
    epp = await start_epp(PODS)
    destinations = []
    exchanges = []
    try:
        for _ in range(4):  # (answers left open: the rank fills up, a load-aware pick would leave it)
            ex = Exchange(epp.stub, timeout=30)
            await ex.__aenter__()
            exchanges.append(ex)
            out = await ex.send_request(headers, body, subset=["127.0.0.7:8001"])
            assert out.status is None, out
            destinations.append(out.destination.split(",")[0])
    finally:
        for ex in exchanges:
            await ex.__aexit__(None, None, None)
    subsets = [r.subset for r in epp.picker.calls.requests]
    assert subsets == [frozenset({"127.0.0.7:8001"})] * 4, f"hint ['127.0.0.7:8001'] widened to {subsets}"
    assert destinations == ["127.0.0.7:8001"] * 4


async def test_an_exact_rank_beside_a_bare_ip_keeps_both(start_epp) -> None:
    """Each entry is read on its own: the rank named exactly, every endpoint on the bare IP."""
    epp = await start_epp(PODS)
    async with Exchange(epp.stub, timeout=30) as ex:
        out = await ex.send_request(H_COMP, COMPLETION, subset=["127.0.0.7:8001", "127.0.0.8"])
    assert out.status is None, out
    assert epp.picker.calls.requests[-1].subset == frozenset({"127.0.0.7:8001", "127.0.0.8:8000"})
