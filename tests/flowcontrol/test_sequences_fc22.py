"""Flow control weighs a request as the sequences a server runs for it (``n`` choices x the prompts of a
batch: ``InferenceRequest.sequences``), where the server's capacity is meant (fc22, #15):

- the late pick (concurrency-detector): a request of s sequences goes to a server with room for all s of
  them (vLLM's ``max_num_seqs`` counts sequences) when one has, else where the most running slots are
  free; the gate asks one free slot of it, as of any request (fixfc22b: flow control never holds a
  request for a fit), so a server holds at most s - 1 of its sequences past its slots, queued there;
- fairness: round-robin gives a flow that sent s sequences its next turn after the others have had s
  (a deficit per flow), least-attained-service charges the prompt once and every sequence's output;
- the fair-share counts (in flight, queued, arrivals) and the running reserve's rates count sequences.

The queue limits (``maxRequests``, ``maxBytes``) and the queue metrics keep counting requests and bytes,
as upstream defines them. A simulated pool on the real Director; n=1 workloads are unchanged.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest, PickResult, Usage

SLOTS = 8
PROMPT = 10
OUT = 100


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def director(fairness: str, clock: Clock, free_slot_pick: bool = True) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        # (a TTL the 60 + 60 backlog outlasts: no request is evicted before its turn)
        "flowControl": {
            "fairnessPolicy": fairness,
            "freeSlotPick": free_slot_pick,
            "defaultRequestTTL": "600s",
        },
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": SLOTS, "maxPendingRequests": SLOTS},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    store = EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
    return build_director(cfg, store, flow_metrics=False, clock=clock)


def request(rid: str, flow: str, n: int) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=PROMPT, max_tokens=OUT, fairness_id=flow, sequences=n)


def simulate(
    fairness: str, backlog: int = 60, free_slot_pick: bool = True
) -> tuple[dict[str, int], dict[str, int], int, int]:
    """Tenant ``big`` sends n=8, ``small`` n=1, both with a backlog queued at once; each request runs one
    second wherever it goes (a server runs a request's sequences side by side). Returns the sequences and
    the tokens (prompt + each sequence's output) dispatched per tenant while both still had requests
    queued, the most sequences any server held at once, and the most a server held just after an n=8
    request was sent to it."""
    clock = Clock()
    d = director(fairness, clock, free_slot_pick)
    flow = d.flow
    assert flow is not None
    eps: list[Endpoint] = list(d.store.all())
    running: deque[tuple[float, InferenceRequest, Endpoint]] = deque()
    left = {"big": backlog, "small": backlog}
    seqs = {"big": 0, "small": 0}
    tokens = {"big": 0, "small": 0}
    peak = peak_multi = 0

    def sent(req: InferenceRequest, ep: Endpoint) -> None:
        nonlocal peak, peak_multi
        tenant = req.fairness_id
        if min(left.values()) > 0:  # (both still had requests queued)
            seqs[tenant] += req.sequences
            tokens[tenant] += PROMPT + req.sequences * OUT
        left[tenant] -= 1
        running.append((clock.now + 1.0, req, ep))
        peak = max(peak, max(e.inflight.requests for e in eps))
        if req.sequences > 1:
            peak_multi = max(peak_multi, ep.inflight.requests)

    for i in range(backlog):
        for tenant, n in (("big", 8), ("small", 1)):
            r = request(f"{tenant}{i}", tenant, n)
            got = flow.arrive(r, 0.0, None)
            if isinstance(got, PickResult):
                sent(r, got.primary)
    while min(left.values()) > 0:
        clock.now += 0.25
        while running and running[0][0] <= clock.now:
            _, r, ep = running.popleft()
            d.on_first_token(r, ep)
            d.on_finished(r, ep, Usage(PROMPT, OUT * r.sequences), True)
        for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
            got = flow.settle(item, clock.now)
            assert isinstance(got, PickResult)
            sent(item.req, got.primary)
        assert clock.now < 1_000, "the queue stopped moving"
    return seqs, tokens, peak, peak_multi


@pytest.mark.parametrize("fairness", ["round-robin", "least-attained-service", "global-strict"])
def test_no_server_holds_more_than_one_requests_overflow(fairness: str) -> None:
    # A request leaves for a free slot: the server it goes to had one, so past its slots it holds at most
    # the s - 1 other sequences of that request (queued in the server, as vLLM runs what fits).
    _seqs, _tokens, peak, _multi = simulate(fairness)
    assert peak <= SLOTS - 1 + 8


@pytest.mark.parametrize("fairness", ["round-robin", "global-strict"])
def test_without_the_free_slot_pick_a_request_of_several_sequences_goes_where_most_slots_are_free(
    fairness: str,
) -> None:
    # Without freeSlotPick the profile places an n=1 request as before (the gate is the pool's mean: it
    # may go to a full server); an n=8 one goes where they fit or the most slots are free (before fc22:
    # 16 of 8): the pool's mean below 1 leaves a server with a free slot.
    _seqs, _tokens, _peak, multi = simulate(fairness, free_slot_pick=False)
    assert multi <= SLOTS - 1 + 8


def test_round_robin_shares_the_servers_by_sequences() -> None:
    seqs, _tokens, _peak, _multi = simulate("round-robin")
    # before: one request a turn each, 8 sequences to 1 (the n=8 tenant took 8x the servers)
    assert 0.75 <= seqs["big"] / seqs["small"] <= 1.35, seqs


def test_least_attained_service_charges_every_sequences_output() -> None:
    _seqs, tokens, _peak, _multi = simulate("least-attained-service")
    # before: an n=8 request charged one output (110 tokens, as an n=1 one): 7.4x the tokens served
    assert 0.75 <= tokens["big"] / tokens["small"] <= 1.35, tokens


def _ctl(**flow_control: Any) -> FlowController:
    return FlowController(parse_flow_control(flow_control))


def test_the_fair_share_counts_sequences_in_flight_and_queued() -> None:
    ctl = _ctl(fairShareHeadroom=0.2)
    ctl.started("big", request("b", "big", 8))
    ctl.started("small", request("s1", "small", 1))
    ctl.started("small", request("s2", "small", 1))
    # 8 of the 10 sequences in flight, 2 flows: over its share (before: 1 request of 3, under it)
    assert ctl.over_share("big") and not ctl.over_share("small")
    ctl.ended("big", 0.0, 8)
    assert not ctl.over_share("big") and ctl.inflight_total == 2 and "big" not in ctl.inflight
    ctl.enqueue(request("q", "big", 8), 0.0)
    assert ctl.queued["big"] == 8 and ctl.over_share("big")
    assert len(ctl) == 1  # maxRequests still counts requests


def test_queue_limits_still_count_requests() -> None:
    ctl = _ctl(maxRequests=2)
    ctl.enqueue(request("a", "big", 16), 0.0)
    ctl.enqueue(request("b", "big", 16), 0.0)
    with pytest.raises(Exception, match="2 requests"):
        ctl.enqueue(request("c", "small", 1), 0.0)


def test_a_request_bigger_than_a_servers_slots_goes_to_an_idle_one() -> None:
    clock = Clock()
    d = director("round-robin", clock)
    a, b = d.store.all()
    huge = request("h", "big", 16)  # 16 sequences, 8 slots a server: never room for all of them
    assert not d.saturated(huge)  # an idle server takes what it can (vLLM runs 8, then the rest)
    a.inflight.requests = b.inflight.requests = 1
    assert not d.saturated(huge)  # (a free slot: it leaves, never held for a fit)
    assert d._free_slot(huge) is None  # (both as free: the profile chooses)
    b.inflight.requests = 0
    assert d._free_slot(huge) == [b]  # the free-slot pick: the server with room for it
    b.inflight.requests = 3
    assert d._free_slot(huge) == [a]  # none with room: the one with the most free slots


def test_round_robin_owes_turns_per_flow_and_forgets_them_with_the_flow() -> None:
    ctl = _ctl(fairnessPolicy="round-robin")
    for i in range(3):
        ctl.enqueue(request(f"b{i}", "big", 4), 0.0)
        ctl.enqueue(request(f"s{i}", "small", 1), 0.0)
    order = []
    while len(ctl):
        item = ctl.head(0.0)
        assert item is not None
        ctl.take(item, 0.0)
        order.append(item.req.request_id)
    # big's 4 sequences are 4 turns: small takes its 3 (all it has) before big's next
    assert order == ["b0", "s0", "s1", "s2", "b1", "b2"]
    band = ctl.bands[0]
    assert band._owed == 0 and not band.flows  # (a flow gone takes its debt with it)


def test_a_lone_flow_repays_its_turns_at_once_and_a_held_request_owes_none() -> None:
    ctl = _ctl(fairnessPolicy="round-robin")
    ctl.enqueue(request("b0", "big", 16_384), 0.0)
    ctl.enqueue(request("b1", "big", 16_384), 0.0)
    ctl.enqueue(request("s0", "small", 1), 0.0)
    item = ctl.head(0.0)
    assert item is not None and item.req.request_id == "b0"
    ctl.take(item, 0.0)
    band = ctl.bands[0]
    assert band._owed == 16_383
    ctl.hold(item, 0.0, 1.0)  # its pick said "not now": not dispatched, no turns owed for it
    assert band._owed == 0 and band.flows["big"].debt == 0
    ctl.cancel(ctl.head(0.0), 0.0)  # (small's, its turn)
    item = ctl.head(0.0)
    assert item is not None and item.req.request_id == "b1"
    ctl.take(item, 0.0)  # big alone in its band: 16,383 turns owed to no one, repaid in one cycle
    assert band._owed == 0
