"""Exact protocol names (GIE endpoint picker protocol v1.0.0); kept in one place so nothing drifts."""

from __future__ import annotations

# Shared with the built-in gateway: one definition in kvgate.openai.protocol.
from kvgate.openai.protocol import (
    CONFORMANCE_SERVED as CONFORMANCE_SERVED,
)
from kvgate.openai.protocol import (
    DEFAULT_FAIRNESS_ID as DEFAULT_FAIRNESS_ID,
)
from kvgate.openai.protocol import (
    DESTINATION_ENDPOINT as DESTINATION_ENDPOINT,
)
from kvgate.openai.protocol import (
    FAIRNESS_ID as FAIRNESS_ID,
)
from kvgate.openai.protocol import (
    LLMD_FAIRNESS_ID as LLMD_FAIRNESS_ID,
)
from kvgate.openai.protocol import (
    LLMD_MODEL_REWRITE as LLMD_MODEL_REWRITE,
)
from kvgate.openai.protocol import (
    LLMD_OBJECTIVE as LLMD_OBJECTIVE,
)
from kvgate.openai.protocol import (
    MODEL_REWRITE as MODEL_REWRITE,
)
from kvgate.openai.protocol import (
    OBJECTIVE as OBJECTIVE,
)
from kvgate.openai.protocol import (
    REQUEST_ID as REQUEST_ID,
)
from kvgate.openai.protocol import (
    TEST_ENDPOINT_SELECTION as TEST_ENDPOINT_SELECTION,
)

# EPP -> gateway: header DESTINATION_ENDPOINT and this dynamic metadata carry the same value.
LB_NAMESPACE = "envoy.lb"
# gateway -> EPP, request: the addresses the EPP may pick from.
SUBSET_HINT_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_HINT_KEY = "x-gateway-destination-endpoint-subset"
# gateway -> EPP, response: the address that actually served.
SERVED_ENDPOINT_KEY = "x-gateway-destination-endpoint-served"

SLO_TTFT = "x-slo-ttft-ms"
SLO_TPOT = "x-slo-tpot-ms"

# Control headers read by the EPP and never forwarded to the model server (llm-d's fairness, objective and
# model-name-rewrite headers as GIE's: review s26-qa F7, qa36b-F4, rev-c36 F4). A client-sent destination
# header is stripped too, so a client cannot steer routing.
STRIPPED_REQUEST_HEADERS = (
    FAIRNESS_ID,
    LLMD_FAIRNESS_ID,
    OBJECTIVE,
    LLMD_OBJECTIVE,
    MODEL_REWRITE,
    LLMD_MODEL_REWRITE,
    DESTINATION_ENDPOINT,
)

# Envoy's ext_proc stream messages are limited in size; the reference re-chunks bodies at this bound.
MAX_BODY_CHUNK = 62_000

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_SERVICES = ("liveness", "readiness", EXT_PROC_SERVICE)
# Older reference manifests probe this name; answered like readiness so they work unchanged.
LEGACY_HEALTH_SERVICE = "inference-extension"

DEFAULT_GRPC_PORT = 9002
DEFAULT_HEALTH_PORT = 9003
DEFAULT_METRICS_PORT = 9090
# ``--drain-timeout``: how long a stop serves the open streams (``server.DRAIN_TIMEOUT_S`` says why 30 s).
DEFAULT_DRAIN_TIMEOUT_S = 30.0
