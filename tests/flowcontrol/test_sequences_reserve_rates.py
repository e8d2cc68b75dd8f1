"""The running reserve and the arrival rates count a request's sequences (fc22; review s22-fc F5: reverting
each to its n=1 form failed no test). ``fairShareRunningReserve`` sizes the free slots it keeps on the
rates at which requests take slots and free them, one a sequence; a flow's arrival rate (``rate_over``)
weighs each arrival as its sequences; a held-back request of s sequences must leave the reserve free with
all s of them (``FlowController.reserve_full``, ``Director._reserve_full``). Injected clock, no process.
"""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.scheduling.types import InferenceRequest

RESERVE = {"fairShareHeadroom": 0.25, "fairShareRunningReserve": True}


def request(rid: str, flow: str, n: int = 1) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, sequences=n)


def test_the_reserves_take_and_finish_rates_count_sequences() -> None:
    rates = {}
    for n in (1, 8):
        ctl = FlowController(parse_flow_control(RESERVE))
        ctl.started("a", request("a", "a", n), 0.0)
        take, _ = ctl.rates(0.0)
        ctl.ended("a", 0.0, n)
        rates[n] = (take, ctl.rates(0.0)[1])
    assert rates[1][0] > 0 and rates[1][1] > 0
    assert rates[8] == (8 * rates[1][0], 8 * rates[1][1])


def test_a_flows_arrival_rate_weighs_its_sequences() -> None:
    """``big`` sends n=8 and ``small`` n=1 at the same request rate: by sequences ``big`` sends 8/9 of the
    load, ``small`` under its share (by requests both would be at the mean, and read alike)."""
    ctl = FlowController(parse_flow_control(RESERVE))
    for i in range(20):
        ctl.arrived(request(f"b{i}", "big", 8), i * 0.5)
        ctl.arrived(request(f"s{i}", "small"), i * 0.5)
    assert ctl.rate_over("big") and not ctl.rate_over("small")


def test_a_held_back_request_leaves_the_reserve_free_with_all_its_sequences() -> None:
    """7 of 10 slots busy, the reserve keeping none free (no rates yet): a held-back n=1 request may take a
    slot, an n=4 one (7 + 4 > 10) may not."""
    ctl = FlowController(parse_flow_control(RESERVE))
    for i in range(6):
        ctl.started("big", request(f"x{i}", "big"))
    ctl.started("small", request("y", "small"))
    assert ctl.held_back(request("q", "big"), 0.0) and ctl.free_reserve(0.0, 2) == 0
    assert not ctl.reserve_full(request("q", "big"), 0.0, 10)
    assert ctl.reserve_full(request("q", "big", 4), 0.0, 10)


def test_the_directors_reserve_counts_all_the_sequences_of_a_request() -> None:
    """The gate's own reserve check on the candidates (2 x 8 slots, 14 busy): an n=1 request held back
    leaves a slot free; an n=4 one would take 3 more than there are."""
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": dict(RESERVE),
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 8, "maxPendingRequests": 8},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    store = EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
    d = build_director(cfg, store, flow_metrics=False, clock=lambda: 0.0)
    a, b = cands = d.store.all()
    a.inflight.requests = a.inflight.decoding = 7
    b.inflight.requests = b.inflight.decoding = 7
    assert not d._reserve_full(request("q", "big"), cands, 0.0)
    assert d._reserve_full(request("q", "big", 4), cands, 0.0)
