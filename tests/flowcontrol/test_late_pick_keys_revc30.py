"""Review s30-rev-c30: flowControl.packCertainMisses / prefillAlonePick (fc30) keep the late pick's
earlier restrictions (F3) and are refused without the pending bound they read (F1). In-process only:
no clock, no processes, no ports."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.saturation import ConcurrencyDetector
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.types import InferenceRequest

ADDRS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


def _cfg(fc_extra: dict[str, Any], detector_params: dict[str, Any]) -> dict[str, Any]:
    return {
        "featureGates": ["flowControl"],
        "flowControl": {"fairShareHeadroom": 0.5, "orderingPolicy": "slo-feasible", **fc_extra},
        "saturationDetector": {"type": "concurrency-detector", "parameters": detector_params},
        "plugins": [{"type": "active-request-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "active-request-scorer"}]}],
    }


def test_prefill_alone_keeps_the_multi_sequence_fit() -> None:
    # maxConcurrency 8, maxPendingRequests 8. A request of 4 sequences: _free_slot keeps only the
    # endpoints with a running slot for each (c). prefillAlonePick's "alone" set is b (nothing pending,
    # 1 free running slot): disjoint from c, so the fit stands and the request goes to c (before the
    # fix to b, where 3 of its 4 sequences would queue).
    d: Director = build_director(
        _cfg({"prefillAlonePick": True}, {"maxConcurrency": 8, "maxPendingRequests": 8}),
        EndpointStore.from_addresses(ADDRS),
        flow_metrics=False,
    )
    assert isinstance(d.detector, ConcurrencyDetector)
    a, b, c = d.store.all()
    a.inflight.requests, a.inflight.decoding = 8, 7  # full
    b.inflight.requests, b.inflight.decoding = 7, 7  # nothing pending, 1 free running slot
    c.inflight.requests, c.inflight.decoding = 2, 1  # 1 pending, 6 free running slots: fits 4
    req = InferenceRequest("n4", "m", prompt_tokens=10, max_tokens=4, sequences=4)
    assert d._free_slot(req) == [c]
    assert d._pick_late(req, False).primary is c


def test_prefill_alone_keeps_the_request_off_a_passed_home() -> None:
    # A queued head waits aside for b (its full home: ``pass_over``): _not_passed_homes keeps the late
    # pick off b (a, c). prefillAlonePick's "alone" set is b only: disjoint, so the request stays off b
    # (review s20-fc M5's rule: the head stays first in line for its home).
    d: Director = build_director(
        _cfg({"prefillAlonePick": True}, {"maxConcurrency": 8, "maxPendingRequests": 2}),
        EndpointStore.from_addresses(ADDRS),
        flow_metrics=False,
    )
    assert d.flow is not None
    a, b, c = d.store.all()
    a.inflight.requests, a.inflight.decoding = 3, 2  # one pending
    b.inflight.requests, b.inflight.decoding = 6, 6  # nothing pending, free running slots
    c.inflight.requests, c.inflight.decoding = 3, 2  # one pending
    d.flow.ctl._pass_homes = frozenset({b.address})
    req = InferenceRequest("q", "m", prompt_tokens=10, max_tokens=4)
    assert d._not_passed_homes(req, None) == [a, c]
    assert d._pick_late(req, False).primary is not b


def test_a_certain_miss_is_not_packed_onto_a_passed_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # a has one pending request, a certain miss: packCertainMisses' packed set is a. But a queued head
    # waits aside for a (``pass_over``): _not_passed_homes keeps the pick off a (b, c), and the packed
    # set yields to it (before the fix the request went to a).
    d: Director = build_director(
        _cfg({"packCertainMisses": True}, {"maxConcurrency": 8, "maxPendingRequests": 2}),
        EndpointStore.from_addresses(ADDRS),
        flow_metrics=False,
    )
    assert d.flow is not None
    a, b, c = d.store.all()
    a.inflight.requests, a.inflight.decoding = 1, 0
    a.inflight.certain_misses = 1
    monkeypatch.setattr(d.flow.ctl, "held_back", lambda req, now=None, slo_deadline=None: True)
    d.flow.ctl.service_ttft = 1.0  # now (0) + 1 s past the deadline (arrival -5 + 2 s): a certain miss
    req = InferenceRequest("m", "m", prompt_tokens=10, max_tokens=4, arrival_time=-5.0)
    det = d.detector
    assert isinstance(det, ConcurrencyDetector)
    assert d._pack_misses(req, det, None) == (True, [a])  # the packed set, no earlier restriction
    d.flow.ctl._pass_homes = frozenset({a.address})
    assert d._not_passed_homes(req, None) == [b, c]
    assert d._pick_late(req, False).primary is not a


@pytest.mark.parametrize("key", ["packCertainMisses", "prefillAlonePick"])
def test_the_key_without_a_pending_bound_is_refused_naming_it(key: str) -> None:
    # Review s30-rev-c30 F1. No maxPendingRequests: the late pick never reads the key (the pending
    # counts it needs are the pending bound's), so it would do nothing, silently; freeSlotPick is
    # refused in the same case. Before the fix the config built.
    with pytest.raises(ConfigError, match=rf"flowControl\.{key}: needs a saturation detector"):
        build_director(
            _cfg({key: True}, {"maxConcurrency": 8}), EndpointStore.from_addresses(ADDRS), flow_metrics=False
        )
    d = build_director(  # with the bound: accepted
        _cfg({key: True}, {"maxConcurrency": 8, "maxPendingRequests": 2}),
        EndpointStore.from_addresses(ADDRS),
        flow_metrics=False,
    )
    assert d.flow is not None
