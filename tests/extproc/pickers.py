"""The pickers the EPP tests run against: kvgate's real Director, optionally returning fallback lists; and
``OnePicker``, one fixed endpoint and no accounting, for tests of the session alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.config.policies import policy_yaml
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import build_epp_director as build
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.session import RequestDirector, Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.scheduling.types import InferenceRequest, PickResult

EP = Endpoint("127.0.0.1:18201")


def build_picker(store: EndpointStore, *, policy: str = "kvgate", fallbacks: int = 1) -> RequestDirector:
    if fallbacks == 1:
        return build(None, store, policy=policy, clock=time.monotonic)
    # The profile picks several endpoints: the EPP answers with a comma-separated fallback list.
    doc = yaml.safe_load(policy_yaml(policy))
    for plugin in doc["plugins"]:
        if plugin["type"] == "max-score-picker":
            plugin["parameters"] = {"maxNumOfEndpoints": fallbacks}
    return build(doc, store, clock=time.monotonic)


class OnePicker:
    """Picks ``EP`` for every request; keeps no account."""

    def pick(self, req: InferenceRequest) -> PickResult:
        return PickResult(endpoints=[EP])

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None: ...
    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None: ...
    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None: ...


def one_endpoint_context(metrics: EppMetrics) -> SessionContext:
    """A session context over ``OnePicker`` that counts into ``metrics``."""
    return SessionContext(OnePicker(), lambda: {EP.address: EP}, clock=time.monotonic, observer=metrics)


def picked_session(
    ctx: SessionContext,
    body: dict[str, Any],
    *,
    response_bodies: bool = True,
    before_body: Callable[[], None] | None = None,
) -> Session:
    """A session driven through a POST's headers and ``body`` to its pick (response bodies announced
    streamed, or ``NONE``); ``before_body`` runs between the two (e.g. to move a test clock)."""
    mode = processing_mode_pb2.ProcessingMode
    s = Session(ctx)
    first = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=header_map({":method": "POST", ":path": "/v1/completions"}))
    )
    first.protocol_config.CopyFrom(
        pb.ProtocolConfiguration(
            request_body_mode=mode.FULL_DUPLEX_STREAMED,
            response_body_mode=mode.FULL_DUPLEX_STREAMED if response_bodies else mode.NONE,
        )
    )
    assert s.handle(first) == []
    if before_body is not None:
        before_body()
    request_body = pb.HttpBody(body=orjson.dumps(body), end_of_stream=True)
    answer = s.handle(pb.ProcessingRequest(request_body=request_body))
    assert answer[0].WhichOneof("response") == "request_headers"
    return s
