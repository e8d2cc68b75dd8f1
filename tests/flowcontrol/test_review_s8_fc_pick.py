"""Review s8-fc: the free-slot late pick (default with concurrency-detector + maxPendingRequests)
replaces the candidates the profile sees with the free ones (Director._pick_late ->
pick(only=_free_slot(req))). A profile filter that keeps only a full endpoint then leaves nothing,
and the request fails with NoCapacityError (503) where, before 8b7b2f6 and without flow control, it
is picked: the restriction should fall back to all candidates when the profile keeps none of the
free ones. Shown with the GIE conformance filter (header-based-testing-filter), whose header names
the endpoint a request must go to.

Fails on main c7391f1 with NoCapacityError("no endpoint left after filter ...").
"""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.types import InferenceRequest, PickResult


def fill(ep: Endpoint, running: int) -> None:
    ep.inflight.requests = running
    ep.inflight.decoding = running


def test_a_filter_that_keeps_only_a_full_endpoint_still_gets_it() -> None:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {"freeSlotPick": True},  # (off by default since the review)
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 2, "maxPendingRequests": 2},
        },
        "plugins": [{"type": "header-based-testing-filter"}, {"type": "queue-scorer"}],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": "header-based-testing-filter"}, {"pluginRef": "queue-scorer"}],
            }
        ],
    }
    d = build_director(
        cfg, EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"]), flow_metrics=False
    )
    full, free = d.store.all()
    fill(full, 2)  # its running batch is full (2 of 2) ...
    fill(free, 1)  # ... the pool's mean is not (3 of 4): the gate is open
    r = InferenceRequest(
        "r", "m", prompt_tokens=10, max_tokens=4,
        headers={"test-epp-endpoint-selection": full.address},
    )  # fmt: skip
    assert d.pick(r).primary is full  # the front door's own pick: the filter's endpoint
    assert not d.saturated(r)
    got = d.flow.arrive(r, 0.0, None)  # type: ignore[union-attr]
    assert isinstance(got, PickResult)
    assert got.primary is full
