"""``copyByWait``: a request whose prefix a candidate holds goes to one holding less (a second copy of the
prefix) only if its own wait there (tokens ahead + its uncached tokens + decodeWeight x requests in
flight, pace-scaled, + the KV penalty) is shorter than at every best holder (issue #16, fam33:
docs/benchmarks/fleet-multiturn-s33.md)."""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer, _copy_only_if_sooner
from kvgate.scheduling.types import InferenceRequest

from .helpers import fleet

HEAD = "".join(f"The tenant's shared instructions, rule number {i}. " for i in range(90))  # ~1,080 tok
QUESTION = "".join(f"question part {i} of a long new turn; " for i in range(110))  # ~4,200 chars, unheld


def _director(by_wait: bool) -> tuple[Director, EndpointStore]:
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            params = dict(spec.parameters or {})
            params.pop("copyByWait", None)
            if by_wait:
                params["copyByWait"] = True
            spec.parameters = params
    store = fleet(2)
    return build_director(cfg, store, clock=lambda: 0.0, seed=0), store


def _holder_and_other(d: Director, store: EndpointStore) -> tuple[Endpoint, Endpoint]:
    r = InferenceRequest("warm", "m", prompt_text=HEAD + "a short first question", max_tokens=50)
    holder = d.pick(r).primary
    d.on_dispatched(r, holder)
    d.on_finished(r, holder, None, True)
    other = next(e for e in store.all() if e is not holder)
    return holder, other


def _pick_long_question(by_wait: bool, ahead_at_holder: int = 0) -> tuple[bool, dict[str, Any]]:
    """Whether a request with the held head and a long unheld question goes to the holder, whose cache
    is 85% full (each uncached token it writes there displaces others' blocks: the cost's premium),
    with ``ahead_at_holder`` prefill tokens already dispatched there; and the picked costs."""
    d, store = _director(by_wait)
    holder, other = _holder_and_other(d, store)
    holder.metrics.kv_cache_usage = 0.85
    holder.inflight.pending_prefill_tokens = ahead_at_holder
    res = d.pick(InferenceRequest("long", "m", prompt_text=HEAD + QUESTION, max_tokens=50), explain=True)
    costs = res.explanation["costs"]
    return res.primary is holder, {"holder": costs[holder.address], "other": costs[other.address]}


def test_a_copy_that_waits_longer_than_the_holder_is_not_made() -> None:
    # Without copyByWait the displacement premium on the question's tokens at the fuller holder makes the
    # empty replica, which must compute the held head again (a second copy), the cheaper one.
    at_holder, costs = _pick_long_question(by_wait=False)
    assert not at_holder and costs["other"] < costs["holder"]
    # With it the copy is not sooner (its wait: head + question there, against the question alone at the
    # holder), so it costs more than the holder and the request stays.
    at_holder, costs = _pick_long_question(by_wait=True)
    assert at_holder and costs["other"] > costs["holder"]


def test_a_copy_that_is_sooner_is_still_made() -> None:
    # A holder with a long prefill queue in front of it: the copy reaches its first token sooner, and
    # copyByWait leaves its cost as it was.
    off_at_holder, off_costs = _pick_long_question(by_wait=False, ahead_at_holder=20_000)
    on_at_holder, on_costs = _pick_long_question(by_wait=True, ahead_at_holder=20_000)
    assert not off_at_holder and not on_at_holder
    assert on_costs == off_costs


def test_the_gate_in_place() -> None:
    # Holders (not copies): 0 and 2; the least holder wait is 100, the cheapest holder cost 50.
    costs = [80.0, 10.0, 50.0, 20.0]
    _copy_only_if_sooner(costs, [100.0, 90.0, 120.0, 130.0], [False, True, False, True])
    # Copy 1 waits less (90): unchanged. Copy 3 waits 30 more: the cheapest holder's 50 + 30 + 1.
    assert costs == [80.0, 10.0, 50.0, 81.0]
    tie = [80.0, 10.0]
    _copy_only_if_sooner(tie, [100.0, 100.0], [False, True])
    assert tie == [80.0, 81.0]  # a tie stays at the holder
    dear = [80.0, 500.0]
    _copy_only_if_sooner(dear, [100.0, 150.0], [False, True])
    assert dear == [80.0, 500.0]  # already dearer than the floor: unchanged
    no_holder = [10.0, 20.0]
    _copy_only_if_sooner(no_holder, [5.0, 6.0], [True, True])  # (a filter removed the holders)
    assert no_holder == [10.0, 20.0]


def test_off_by_default() -> None:
    d, _ = _director(by_wait=False)
    scorer = d.handle.find(KVGateCostScorer)
    assert scorer is not None and not scorer.copy_by_wait
    assert "copyByWait" not in (
        next(s for s in policy_config("kvgate").plugins if s.type == "kvgate-cost-scorer").parameters or {}
    )
