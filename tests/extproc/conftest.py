"""Fixtures: a real EPP (grpc.aio on 127.0.0.1, ephemeral port) over a real picker and endpoint store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.outlier import Outlier
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import RequestDirector, SessionContext
from kvgate.extproc.testing import channel
from kvgate.openai.request import RequestPolicy
from kvgate.scheduling.types import InferenceRequest, PickResult

from .pickers import build_picker


@dataclass
class Calls:
    """Every accounting call the EPP made, to check each request is closed exactly once."""

    dispatched: list[tuple[str, str]] = field(default_factory=list)
    first_token: list[tuple[str, str]] = field(default_factory=list)
    finished: list[tuple[str, str, Any, bool]] = field(default_factory=list)
    prefilled: list[tuple[str, str]] = field(default_factory=list)
    requests: list[InferenceRequest] = field(default_factory=list)


class RecordingPicker:
    """Wraps the real picker and records the calls made to it (the picker still does the work)."""

    def __init__(self, inner: RequestDirector) -> None:
        self.inner = inner
        self.calls = Calls()

    def pick(self, req: InferenceRequest) -> PickResult:
        self.calls.requests.append(req)
        return self.inner.pick(req)

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None:
        self.calls.dispatched.append((req.request_id, endpoint.address))
        self.inner.on_dispatched(req, endpoint)

    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None:
        self.calls.first_token.append((req.request_id, endpoint.address))
        self.inner.on_first_token(req, endpoint, learn=learn)

    def on_prefilled(self, req: InferenceRequest, endpoint: Endpoint) -> None:
        self.calls.prefilled.append((req.request_id, endpoint.address))
        prefilled = getattr(self.inner, "on_prefilled", None)  # (the hub's director has none)
        if prefilled is not None:
            prefilled(req, endpoint)

    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None:
        self.calls.finished.append((req.request_id, endpoint.address, usage, ok))
        self.inner.on_finished(req, endpoint, usage, ok)


@dataclass
class Epp:
    server: EppServer
    store: EndpointStore
    picker: RecordingPicker
    stub: pb_grpc.ExternalProcessorStub | None  # None for TLS servers: tests open their own channel
    metrics: EppMetrics

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


StartEpp = Callable[..., Any]


@pytest.fixture
async def start_epp() -> AsyncIterator[StartEpp]:
    """Start an EPP over ``addresses``; every one started is stopped at the end of the test."""
    started: list[tuple[EppServer, Any]] = []

    async def start(
        addresses: list[str],
        *,
        policy: str = "kvgate",
        fallbacks: int = 1,
        conformance: bool = False,
        tls: Any = None,
        client_ca: bytes | None = None,
        objectives: dict[str, int] | None = None,
        model_rewrite: Callable[[str], str | None] = lambda _m: None,
        max_concurrent_streams: int = 10_000,
        health: HealthConfig | None = HealthConfig(),  # (kvgate epp's passive health; None: none)
        **ctx_kw: Any,
    ) -> Epp:
        store = EndpointStore.from_addresses(addresses)
        if health is not None:  # passive health from the answers (``kvgate epp``'s, ``build_context``)
            ctx_kw["outlier"] = Outlier(
                HealthTracker(health, time.monotonic, store.all), lambda: {e.address: e for e in store.all()}
            )
        picker = RecordingPicker(build_picker(store, policy=policy, fallbacks=fallbacks))
        metrics = EppMetrics()
        objs = objectives or {}
        ctx = SessionContext(
            picker, lambda: {e.address: e for e in store.all()}, clock=time.monotonic, observer=metrics,
            policy=RequestPolicy(objectives=objs), model_rewrite=model_rewrite,
            conformance_hooks=conformance, **ctx_kw,
        )  # fmt: skip
        opts = ServerOptions(
            host="127.0.0.1", port=0, health_port=0, metrics_port=0, tls=tls, client_ca=client_ca,
            max_concurrent_streams=max_concurrent_streams,
        )  # fmt: skip
        server = EppServer(ctx, opts, metrics=metrics, ready=lambda: len(store) > 0)
        await server.start()
        ch = None
        if tls is None:
            ch = channel(f"127.0.0.1:{server.port}")
        started.append((server, ch))
        stub = pb_grpc.ExternalProcessorStub(ch) if ch is not None else None
        return Epp(server, store, picker, stub, metrics)

    yield start
    for server, ch in started:
        if ch is not None:
            await ch.close()
        await server.stop(0)
