"""rev-c36 F3, F4 (``kvgate serve``): llm-d-router's control headers win over GIE's, their deprecated aliases
(red-hat-data-services/llm-d-router 1f2d25d7 ``pkg/epp/metadata/consts.go``; its handlers test "Prefers new
control headers over old aliases"): the fairness id, as the objective already did (one request's objective
and flow came from different headers), the SLO headers (``x-llm-d-slo-ttft-ms`` before ``x-slo-ttft-ms``),
and ``x-llm-d-model-name-rewrite`` is a control header, never forwarded to the model server."""

from __future__ import annotations

from kvgate.extproc import keys
from kvgate.flowcontrol.policies import SLO_TPOT_HEADERS, SLO_TTFT_HEADERS, header_ms
from kvgate.gateway.proxy import _filter_headers
from kvgate.scheduling.plugins.predicted_latency import slo_targets
from kvgate.scheduling.types import InferenceRequest


def test_the_fairness_id_prefers_llmds_header_as_the_objective_does() -> None:
    _, objective, fairness, _, _ = _filter_headers(
        {
            "x-gateway-inference-fairness-id": "old-user",
            "x-llm-d-inference-fairness-id": "new-user",
            "x-gateway-inference-objective": "old-objective",
            "x-llm-d-inference-objective": "new-objective",
        }
    )
    assert (objective, fairness) == ("new-objective", "new-user")


def test_the_slo_headers_prefer_llmds_names() -> None:
    h = {
        "x-slo-ttft-ms": "900",
        "x-llm-d-slo-ttft-ms": "300",
        "x-slo-tpot-ms": "90",
        "x-llm-d-slo-tpot-ms": "30",
    }
    assert header_ms(h, SLO_TTFT_HEADERS) == 0.3 and header_ms(h, SLO_TPOT_HEADERS) == 0.03
    assert slo_targets(InferenceRequest("r", "m", prompt_text="x", headers=h)) == (0.3, 0.03)


def test_llmds_model_name_rewrite_header_is_a_control_header() -> None:
    out, *_ = _filter_headers({"x-llm-d-model-name-rewrite": "new-model", "x-user": "1"})
    assert out == {"x-user": "1"}
    assert "x-llm-d-model-name-rewrite" in keys.STRIPPED_REQUEST_HEADERS
