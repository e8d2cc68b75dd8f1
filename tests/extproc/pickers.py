"""The picker the EPP tests run against: kvgate's real Director, optionally returning fallback lists."""

from __future__ import annotations

import time

import yaml

from kvgate.config.policies import policy_yaml
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import build_epp_director as build
from kvgate.extproc.session import RequestDirector


def build_picker(store: EndpointStore, *, policy: str = "kvgate", fallbacks: int = 1) -> RequestDirector:
    if fallbacks == 1:
        return build(None, store, policy=policy, clock=time.monotonic)
    # The profile picks several endpoints: the EPP answers with a comma-separated fallback list.
    doc = yaml.safe_load(policy_yaml(policy))
    for plugin in doc["plugins"]:
        if plugin["type"] == "max-score-picker":
            plugin["parameters"] = {"maxNumOfEndpoints": fallbacks}
    return build(doc, store, clock=time.monotonic)
