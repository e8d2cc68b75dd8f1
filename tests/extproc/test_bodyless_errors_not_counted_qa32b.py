"""qa32b Q2: a body-less request (``GET /v1/models``, ``GET /v1/responses/{id}``, a probe Envoy routes
through the EPP) is no inference request: ``inference_objective_request_total`` never counts it (docs/epp.md
"Metrics"), and ``kvgate serve`` counts none of its errors either. Before the fix the EPP still counted its
model server's 4xx/5xx, and its client leaving (``client_gone``), in
``inference_objective_request_error_total`` / ``llm_d_epp_request_error_total`` under empty model labels: an
error ratio ``error_total / request_total`` counted errors of requests not in its denominator
(fails on 0d8d2049)."""

from __future__ import annotations

import asyncio

from extproc.flow_epp import request_errors
from kvgate.extproc.testing import Exchange

PODS = ["127.0.0.7:8000", "127.0.0.8:8000"]


def _errors(registry) -> dict[tuple[str, ...], float]:
    return request_errors(registry, ("error_code", "model_name"))


async def test_a_bodyless_lookups_404_is_no_request_error(start_epp) -> None:
    epp = await start_epp(PODS)
    headers = {":method": "GET", ":path": "/v1/responses/resp_expired", ":authority": "gw"}
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(headers, None)
        assert out.status is None and out.destination  # picked on its headers
        body = [b'{"error":{"message":"gone"}}']
        await ex.send_response(404, {"content-type": "application/json"}, body, served=out.destination)
    assert _errors(epp.metrics.registry) == {}, "a body-less GET's 404 counted as a request error"


async def test_a_bodyless_request_whose_client_leaves_is_no_client_gone(start_epp) -> None:
    epp = await start_epp(PODS)
    headers = {":method": "GET", ":path": "/v1/models", ":authority": "gw"}
    ex = Exchange(epp.stub)
    await ex.__aenter__()
    try:
        out = await ex.send_request(headers, None)
        assert out.status is None and out.destination
    finally:
        ex.cancel()  # the client went away before the answer
        await ex.close()
    # (the stream's end reaches the EPP's session a moment after the cancel: poll, generously)
    streams = epp.metrics.streams._value
    deadline = asyncio.get_running_loop().time() + 60
    while streams.get() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert streams.get() == 0
    assert _errors(epp.metrics.registry) == {}, "a body-less GET whose client left counted as client_gone"


async def test_a_parsed_requests_404_is_still_counted(start_epp) -> None:
    """The control: a request with a parsed body keeps its model server's error count."""
    epp = await start_epp(PODS)
    headers = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(headers, b'{"model":"m","prompt":"hi","max_tokens":2}')
        assert out.status is None and out.destination
        body = [b'{"error":{"message":"no"}}']
        await ex.send_response(404, {"content-type": "application/json"}, body, served=out.destination)
    errors = _errors(epp.metrics.registry)
    assert {k[:2] for k in errors} == {
        ("inference_objective_request_error_total", "404"),
        ("llm_d_epp_request_error_total", "404"),
    }, errors
