"""Review s29-rev-cfg29 F1 (fixcfg29). llm-d-router's role filters (filter/bylabel/roles.go)
keep more role values than kvgate's: decode-filter keeps decode, prefill-decode, both (deprecated alias),
encode-prefill-decode and unlabelled pods; prefill-filter keeps prefill, encode-prefill, prefill-decode,
both, encode-prefill-decode. kvgate (a049092b) keeps {decode, both, unlabelled} / {prefill}, the oldest
llm-d-inference-scheduler set, so a pool labelled with the current name ``prefill-decode`` gets no endpoint
from llm-d-router's own deploy/config/epp-config.yaml (decode-filter) and every request fails.
Fails on main 8d0494f9."""

from __future__ import annotations

import random

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import CycleState, PluginHandle
from kvgate.scheduling.plugins.filters import DecodeFilter, PrefillFilter
from kvgate.scheduling.types import InferenceRequest

from .test_llmd_samples_cfg29 import EPP_CONFIG

DECODE = ["decode", "prefill-decode", "both", "encode-prefill-decode"]
PREFILL = ["prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"]


def _ep(addr: str, role: str | None) -> Endpoint:
    labels = {} if role is None else {"llm-d.ai/role": role}
    return Endpoint(address=addr, metrics=EndpointMetrics(updated_at=0.0), labels=labels)


def _kept(flt: type, roles: list[str | None]) -> set[str | None]:
    eps = [_ep(f"10.0.0.{i}:8000", r) for i, r in enumerate(roles)]
    h = PluginHandle(None, lambda: 0.0, 2.0, random.Random(0))
    c = CycleState(InferenceRequest("r", "m", prompt_text="x"), 0.0)
    out = flt("f", h).filter(c, eps)
    return {e.labels.get("llm-d.ai/role") for e in out}


ALL: list[str | None] = ["decode", "prefill", "encode", "prefill-decode", "both", "encode-prefill",
                         "encode-prefill-decode", "other", None]  # fmt: skip


def test_decode_filter_keeps_the_references_decode_roles() -> None:
    assert _kept(DecodeFilter, ALL) == {*DECODE, None}


def test_prefill_filter_keeps_the_references_prefill_roles() -> None:
    assert _kept(PrefillFilter, ALL) == set(PREFILL)


@pytest.mark.parametrize("role", ["prefill-decode", "encode-prefill-decode"])
def test_a_pool_labelled_with_the_current_role_name_is_routed(role: str) -> None:
    store = EndpointStore([_ep("10.0.0.1:8000", role), _ep("10.0.0.2:8000", role)])
    d = build_director(load_config(EPP_CONFIG), store, clock=lambda: 0.0, seed=0)
    picked = d.pick(InferenceRequest("r0", "m", prompt_text="hello " * 50)).primary.address
    assert picked in {"10.0.0.1:8000", "10.0.0.2:8000"}
