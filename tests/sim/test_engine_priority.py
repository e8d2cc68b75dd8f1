"""``EngineConfig.scheduling_policy``: vLLM's ``--scheduling-policy priority`` orders the waiting queue by
(request priority, arrival), lower first; fcfs (the default) keeps arrival order."""

from __future__ import annotations

import pytest

from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.types import SimRequest


def engine(policy: str) -> Engine:
    return Engine(EngineConfig(profile="tiny", max_num_seqs=1, scheduling_policy=policy))


def order_started(e: Engine, reqs: list[SimRequest]) -> list[str]:
    for i, r in enumerate(reqs):
        r.arrival_time = 0.001 * (i + 1)
        e.add_request(r, r.arrival_time)
    started: list[str] = []
    now = 0.0
    while e.has_work():
        res = e.step(now)
        now += res.duration
        started += [r.request_id for r in res.started]
    return started


def reqs() -> list[SimRequest]:
    return [
        SimRequest(rid, list(range(10)), 2, priority=p)
        for rid, p in (("a", 5), ("b", 0), ("c", 5), ("d", -1))
    ]


def test_priority_policy_starts_lower_priority_values_first_ties_by_arrival() -> None:
    assert order_started(engine("priority"), reqs()) == ["d", "b", "a", "c"]


def test_fcfs_ignores_the_priority_field() -> None:
    assert order_started(engine("fcfs"), reqs()) == ["a", "b", "c", "d"]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="scheduling_policy"):
        EngineConfig(profile="tiny", scheduling_policy="lifo")
