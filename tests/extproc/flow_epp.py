"""Shared set-up of the EPP tests that run a real ``EppServer`` on loopback around a Director built from an
EndpointPickerConfig (flow control's: ``flow_control_config``), and the request-error counts the body-less
tests compare (small33 (e): the set-up session 32's qa32b / rev-d32 tests each carried a copy of)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import CollectorRegistry

from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import channel

ERROR_FAMILIES = ("inference_objective_request_error", "llm_d_epp_request_error")


def flow_control_config(max_concurrency: int, **extra: Any) -> dict[str, Any]:
    """Flow control on, gated by the ``concurrency-detector`` (the EPP's own in-flight count per endpoint:
    no scraped metrics needed for the gate to open), the queue scorer picking; ``extra``: more keys."""
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "featureGates": ["flowControl"],
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": max_concurrency},
        },
        "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"}],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}
        ],
        **extra,
    }


@asynccontextmanager
async def epp_serving(
    director: Any, store: EndpointStore, metrics: EppMetrics, admit: Callable[..., Any] | None, **ctx_kw: Any
) -> AsyncIterator[pb_grpc.ExternalProcessorStub]:
    """An ``EppServer`` on an ephemeral loopback port (no health or metrics port) serving ``director``,
    observed by ``metrics``, with ``admit`` (flow control's ``director.admit``, or None) and ``ctx_kw`` (more
    ``SessionContext`` keywords: ``policy``...); a stub to it."""
    ctx = SessionContext(
        director, AddressIndex(store), clock=time.monotonic, observer=metrics, admit=admit, **ctx_kw
    )
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        yield pb_grpc.ExternalProcessorStub(ch)
    finally:
        await ch.close()
        await server.stop(0)


def request_errors(registry: CollectorRegistry, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """The non-zero samples of the request-error families (the deprecated name and llm-d's), each keyed by
    its sample name and then ``labels``' values."""
    out: dict[tuple[str, ...], float] = {}
    for family in registry.collect():
        if family.name in ERROR_FAMILIES:
            for s in family.samples:
                if s.name.endswith("_total") and s.value:
                    out[(s.name, *(s.labels[k] for k in labels))] = s.value
    return out
