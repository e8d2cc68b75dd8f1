"""The virtual clock and replicas stepping engines on it."""

from __future__ import annotations

import random

import pytest

from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.types import SimRequest, StepResult
from kvgate.sim.vclock import VirtualClock, VirtualReplica


def test_events_run_in_time_order_ties_fifo() -> None:
    clock = VirtualClock()
    seen: list[tuple[float, str]] = []
    clock.call_at(2.0, lambda: seen.append((clock.now, "b")))
    clock.call_at(1.0, lambda: seen.append((clock.now, "a1")))
    clock.call_at(1.0, lambda: seen.append((clock.now, "a2")))
    clock.call_later(0.5, lambda: clock.call_later(0.25, lambda: seen.append((clock.now, "nested"))))
    cancelled = clock.call_at(1.5, lambda: seen.append((clock.now, "cancelled")))
    cancelled.cancel()
    clock.run_until(1.2)
    assert seen == [(0.75, "nested"), (1.0, "a1"), (1.0, "a2")]
    assert clock.now == 1.2 and clock.next_time() == 1.5
    clock.run()
    assert seen[-1] == (2.0, "b") and clock.pending == 0
    assert clock.time() == 2.0
    clock.call_at(0.0, lambda: seen.append((clock.now, "past")))  # clamped to now, never back in time
    clock.run()
    assert seen[-1] == (2.0, "past")


def test_run_with_max_events() -> None:
    clock = VirtualClock()
    hits: list[int] = []
    for i in range(5):
        clock.call_at(float(i), hits.append, i)
    clock.run(max_events=3)
    assert hits == [0, 1, 2] and clock.pending == 2


def test_replica_delivers_tokens_at_step_ends() -> None:
    clock = VirtualClock()
    tokens: list[tuple[str, int, float]] = []
    firsts: list[tuple[str, float]] = []
    done: list[tuple[str, float]] = []
    steps: list[StepResult] = []
    rep = VirtualReplica(
        clock,
        Engine(EngineConfig(profile="tiny")),
        on_token=lambda r, tok, t: tokens.append((r.request_id, tok, t)),
        on_first_token=lambda r, t: firsts.append((r.request_id, t)),
        on_finished=lambda r, t: done.append((r.request_id, t)),
        on_step=lambda _rep, res: steps.append(res),
    )
    r = SimRequest("a", list(range(100)), max_tokens=5)
    clock.call_at(1.0, rep.submit, r)
    clock.run()
    assert r.arrival_time == 1.0 and r.first_scheduled_time == 1.0
    assert firsts == [("a", 1.0 + steps[0].duration)]
    assert r.first_token_time == pytest.approx(firsts[0][1])
    assert [t for _, t, _ in tokens] == r.output_token_ids
    ends = [1.0 + sum(s.duration for s in steps[: i + 1]) for i in range(len(steps))]
    assert [t for _, _, t in tokens] == pytest.approx(ends)
    assert done == [("a", pytest.approx(ends[-1]))]
    assert not rep.busy and rep.steps == 5 and rep.busy_time == pytest.approx(ends[-1] - 1.0)


def test_submit_while_busy_joins_the_next_step() -> None:
    clock = VirtualClock()
    rep = VirtualReplica(clock, Engine(EngineConfig(profile="tiny")))
    a, b = SimRequest("a", list(range(50)), 20), SimRequest("b", list(range(500, 550)), 3)
    rep.submit(a)
    clock.call_at(0.0001, rep.submit, b)  # mid-step: b waits for the step to end
    clock.run()
    assert b.arrival_time == 0.0001
    assert b.first_scheduled_time is not None and b.first_scheduled_time > b.arrival_time
    assert a.finish_reason == b.finish_reason == "length"


def test_abort_mid_step_suppresses_callbacks() -> None:
    clock = VirtualClock()
    got: list[str] = []
    rep = VirtualReplica(
        clock, Engine(EngineConfig(profile="tiny")), on_token=lambda r, _t, _n: got.append(r.request_id)
    )
    rep.submit(SimRequest("a", list(range(20)), 50))
    clock.run_until(0.01)
    n = len(got)
    assert n > 0 and rep.busy
    assert rep.abort("a")
    clock.run()
    assert len(got) == n and not rep.busy


def _fleet_run(seed: int, replicas: int, requests: int) -> list[tuple[str, float, float, list[int]]]:
    rng = random.Random(seed)
    clock = VirtualClock()
    done: list[SimRequest] = []
    fleet = [
        VirtualReplica(
            clock,
            Engine(EngineConfig(profile="llama3-8b-h100")),
            name=f"r{i}",
            on_finished=lambda r, _t: done.append(r),
        )
        for i in range(replicas)
    ]
    prefixes = [[rng.randrange(50_000) for _ in range(256)] for _ in range(16)]
    t = 0.0
    for i in range(requests):
        t += rng.expovariate(2000.0)  # 2000 QPS across the fleet
        prompt = prefixes[rng.randrange(16)] + [rng.randrange(50_000) for _ in range(rng.randrange(8, 128))]
        req = SimRequest(f"q{i}", prompt, max_tokens=rng.randrange(4, 64))
        clock.call_at(t, fleet[rng.randrange(replicas)].submit, req)
    clock.run()
    assert len(done) == requests
    assert all(r.finish_reason == "length" and len(r.output_token_ids) == r.max_tokens for r in done)
    assert sum(rep.engine.stats().prefix_cache_hits for rep in fleet) > 0
    return [
        (r.request_id, r.first_token_time or -1.0, r.finish_time or -1.0, r.output_token_ids) for r in done
    ]


def test_hundred_replicas_thousands_of_requests_deterministic() -> None:
    first = _fleet_run(seed=7, replicas=100, requests=3000)
    second = _fleet_run(seed=7, replicas=100, requests=3000)
    assert first == second
    other = _fleet_run(seed=8, replicas=100, requests=300)
    assert other != first[:300]
