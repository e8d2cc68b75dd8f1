"""rev-d32 F1: a POST to an inference path whose headers end the request (no body) is refused by the EPP
itself, as ``kvgate serve`` refuses it: 400 ``request body is empty; expected a JSON object`` (OpenAI-style
JSON), counted in ``inference_objective_request_error_total`` / ``llm_d_epp_request_error_total`` under
``error_code="400"`` and empty model labels (a refusal before the parse), nothing picked or routed. Since
d71aae86 the EPP routed it on its headers and counted nothing of the model server's 400, while ``kvgate
serve`` counted its own 400: the doors disagreed (fails on 97571d4a). A body-less POST to a path that is no
inference API (a Responses cancel) is still picked on its headers."""

from __future__ import annotations

import json

import pytest

from extproc.flow_epp import request_errors
from kvgate.extproc.testing import Exchange

PODS = ["127.0.0.7:8000", "127.0.0.8:8000"]


def _errors(registry) -> dict[tuple[str, ...], float]:
    return request_errors(registry, ("error_code", "model_name", "target_model_name"))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
async def test_an_empty_post_to_an_inference_path_is_refused_and_counted(start_epp, path: str) -> None:
    epp = await start_epp(PODS)
    headers = {":method": "POST", ":path": path, "content-type": "application/json"}
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(headers, None)  # (no body: the headers end the request)
    assert out.status == 400, (out.status, out.destination)
    assert not out.destination and not epp.picker.calls.requests  # nothing picked, nothing routed
    error = json.loads(out.immediate.body)["error"]
    assert error["message"] == "request body is empty; expected a JSON object"  # (kvgate serve's words)
    assert error["type"] == "invalid_request_error"
    assert _errors(epp.metrics.registry) == {
        ("inference_objective_request_error_total", "400", "", ""): 1.0,
        ("llm_d_epp_request_error_total", "400", "", ""): 1.0,
    }


async def test_a_bodyless_cancel_is_still_picked_on_its_headers(start_epp) -> None:
    """The control: ``POST /v1/responses/{id}/cancel`` has no body by design (no inference API's path)."""
    epp = await start_epp(PODS)
    headers = {":method": "POST", ":path": "/v1/responses/resp_1/cancel"}
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(headers, None)
        assert out.status is None and out.destination  # picked on its headers
        await ex.send_response(200, {"content-type": "application/json"}, [b"{}"], served=out.destination)
    assert _errors(epp.metrics.registry) == {}
