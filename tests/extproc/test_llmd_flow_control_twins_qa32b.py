"""qa32b Q7: llm-d-router's EPP (``pkg/epp/metrics``, the ``llm_d_epp`` subsystem) exports every
``inference_extension_flow_control_*`` / ``inference_extension_scheduler_*`` family kvgate exports under an
``llm_d_epp_`` name too, and marks the old names "Deprecated: Use llm_d_epp_flow_control_... instead"
(llm-d's workload-variant-autoscaler and dashboards read the new ones first). kvgate exported the
``llm_d_epp_`` twins of the request and pool families only. Fails on 0d8d2049.
``llm_d_epp_scheduler_attempts_total`` is left out: upstream's labels (``target_model_name``,
``endpoint_name``, ``namespace``, ``port``) are not kvgate's ``{status}`` (docs/epp.md says so)."""

from __future__ import annotations

import orjson

from extproc.flow_epp import epp_serving, flow_control_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.testing import Exchange

FLOW_CONTROL = flow_control_config(64)
TWINS = {
    "inference_extension_flow_control_queue_size": "llm_d_epp_flow_control_queue_size",
    "inference_extension_flow_control_queue_bytes": "llm_d_epp_flow_control_queue_bytes",
    "inference_extension_flow_control_pool_saturation": "llm_d_epp_flow_control_pool_saturation",
    "inference_extension_flow_control_request_queue_duration_seconds": (
        "llm_d_epp_flow_control_request_queue_duration_seconds"
    ),
    "inference_extension_scheduler_e2e_duration_seconds": "llm_d_epp_scheduler_e2e_duration_seconds",
}


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


async def test_every_deprecated_family_has_its_llm_d_epp_twin() -> None:
    store = EndpointStore.from_addresses(["127.0.0.7:8000", "127.0.0.8:8000"])
    director = build_epp_director(FLOW_CONTROL, store, policy="kvgate", pool="pool-qa32b")
    metrics = EppMetrics()
    async with epp_serving(director, store, metrics, director.admit) as stub:
        async with Exchange(stub) as ex:
            out = await ex.send_request(
                {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"},
                orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4}),
            )
        assert out.destination
        text = metrics.exposition().decode()  # what the metrics port serves
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert all(old in types for old in TWINS), "a deprecated family not exported: the test's setup is wrong"
    missing = sorted(new for new in TWINS.values() if new not in types)
    assert missing == [], f"llm-d's current names missing beside the deprecated ones: {missing}"
    assert {types[new] for new in TWINS.values()} >= {"gauge", "histogram"}
    for old, new in TWINS.items():
        assert types[old] == types[new], (old, new)
    # the same series (the process-wide collectors: other tests' pools may be there too; this one's)
    olds = _samples(text, "inference_extension_flow_control_request_queue_duration_seconds_count")
    news = _samples(text, "llm_d_epp_flow_control_request_queue_duration_seconds_count")
    assert [s.split("_count", 1)[1] for s in olds] == [s.split("_count", 1)[1] for s in news]
    assert any('inference_pool="pool-qa32b"' in s for s in news)
    # llm-d's pool saturation carries its ``stage`` (``effective``: the value the gate reads)
    sat = _samples(text, "llm_d_epp_flow_control_pool_saturation")
    assert any('inference_pool="pool-qa32b"' in s and 'stage="effective"' in s for s in sat), sat
