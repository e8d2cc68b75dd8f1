"""The pickers the EPP tests run against: kvgate's real Director, optionally returning fallback lists; and
``OnePicker``, one fixed endpoint and no accounting, for tests of the session alone."""

from __future__ import annotations

import time
from typing import Any

import yaml

from kvgate.config.policies import policy_yaml
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import build_epp_director as build
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.session import RequestDirector, SessionContext
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
