"""Exact protocol names (GIE endpoint picker protocol v1.0.0); kept in one place so nothing drifts."""

from __future__ import annotations

# EPP -> gateway: header and dynamic metadata carry the same value.
DESTINATION_ENDPOINT = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
# gateway -> EPP, request: the addresses the EPP may pick from.
SUBSET_HINT_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_HINT_KEY = "x-gateway-destination-endpoint-subset"
# gateway -> EPP, response: the address that actually served.
SERVED_ENDPOINT_KEY = "x-gateway-destination-endpoint-served"

FAIRNESS_ID = "x-gateway-inference-fairness-id"
OBJECTIVE = "x-gateway-inference-objective"
MODEL_REWRITE = "x-gateway-model-name-rewrite"
REQUEST_ID = "x-request-id"
SLO_TTFT = "x-slo-ttft-ms"
SLO_TPOT = "x-slo-tpot-ms"
DEFAULT_FAIRNESS_ID = "default-flow"

# Control headers read by the EPP and never forwarded to the model server. A client-sent destination
# header is stripped too, so a client cannot steer routing.
STRIPPED_REQUEST_HEADERS = (FAIRNESS_ID, OBJECTIVE, MODEL_REWRITE, DESTINATION_ENDPOINT)

# Conformance hooks (GIE conformance suite).
TEST_ENDPOINT_SELECTION = "test-epp-endpoint-selection"
CONFORMANCE_SERVED = "x-conformance-test-served-endpoint"

# Envoy's ext_proc stream messages are limited in size; the reference re-chunks bodies at this bound.
MAX_BODY_CHUNK = 62_000

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_SERVICES = ("liveness", "readiness", EXT_PROC_SERVICE)
# Older reference manifests probe this name; answered like readiness so they work unchanged.
LEGACY_HEALTH_SERVICE = "inference-extension"

DEFAULT_GRPC_PORT = 9002
DEFAULT_HEALTH_PORT = 9003
DEFAULT_METRICS_PORT = 9090
