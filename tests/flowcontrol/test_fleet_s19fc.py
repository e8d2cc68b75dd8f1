"""Review s19-fc M2: a worker's fleet mark names a band whose choice is a head waiting for its own subset
(a Responses follow-up pinned to its saturated home) by the request behind it, which that worker sends
first (flw19's pass-over): another worker no longer fills a freed slot with a lower band's request first.
Pure, two workers on one shared segment, an injected clock."""

from __future__ import annotations

from flowcontrol.test_fleet import Fleet
from kvgate.flowcontrol.controller import PASS_OVER_MAX
from kvgate.scheduling.types import InferenceRequest


def req(rid: str, flow: str, home: str | None = None, priority: int = 0) -> InferenceRequest:
    subset = None if home is None else frozenset({home})
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=subset, priority=priority
    )


def pinned_fleet() -> Fleet:
    f = Fleet()
    for d in f.ds:  # a pinned request's home is saturated; the rest of the pool has f.free slots
        d.saturated = lambda r: r.subset is not None or f.free <= 0
    return f


def test_a_band_behind_a_pinned_head_is_published_to_the_other_workers() -> None:
    f = pinned_fleet()
    f.arrive(1, req("pinned", "critical", home="10.0.0.9:8000", priority=10))
    f.arrive(1, req("crit", "critical", priority=10))
    f.arrive(0, req("low", "t0", priority=0))
    f.step(1)  # worker 1's pass: pool full, its mark published
    f.free = 1  # a slot frees; worker 0 passes first
    f.step(0)
    f.step(1)
    assert f.sent == [(1, "crit")], f.sent  # (worker 0 sent "low" before)
    assert f.ds[1].ctl.parked == 1  # (waits aside for its home: fc20)


def test_pinned_heads_of_several_flows_are_passed_over_in_the_mark() -> None:
    f = pinned_fleet()
    for i in range(3):
        f.arrive(1, req(f"pinned{i}", f"s{i}", home=f"10.0.0.{i}:8000", priority=10))
    f.arrive(1, req("crit", "critical", priority=10))
    f.arrive(0, req("low", "t0", priority=0))
    f.step(1)
    f.free = 1
    f.step(0)
    f.step(1)
    assert f.sent == [(1, "crit")], f.sent


def test_a_band_of_pinned_heads_only_is_not_published() -> None:
    """Nothing in the band but heads waiting for their homes: the mark names the band below (as before)."""
    f = pinned_fleet()
    f.arrive(1, req("pinned", "critical", home="10.0.0.9:8000", priority=10))
    f.arrive(0, req("low", "t0", priority=0))
    f.step(1)
    f.free = 1
    f.step(0)
    assert f.sent == [(0, "low")], f.sent


def test_past_the_pass_over_cap_the_band_waits_aside_and_is_not_published() -> None:
    """From s19-fc to fc20 a dispatch pass ended at PASS_OVER_MAX pass-overs (the band and those below
    waited) and the mark named the band, so another worker's lower band waited too. Now the pass parks
    every head whose home is full, with no bound, and the mark (parked heads are in no band's selection)
    names the band below: another worker's lower band goes, as one process's would."""
    f = pinned_fleet()
    for i in range(PASS_OVER_MAX + 1):
        f.arrive(1, req(f"p{i}", f"s{i}", home=f"10.0.{i}.1:8000", priority=10))
    f.arrive(0, req("low", "t0", priority=0))
    f.step(1)
    assert f.ds[1].ctl.parked == PASS_OVER_MAX + 1
    f.free = 1
    f.step(0)
    assert f.sent == [(0, "low")], f.sent


def test_many_heads_pinned_to_few_homes_do_not_hold_the_other_workers() -> None:
    """Review s19-fixes-b L1: the mark bounds its pass-overs as a dispatch pass does (distinct subsets):
    65 heads pinned to two homes no longer name their band, so another worker's lower band goes."""
    f = pinned_fleet()
    for i in range(PASS_OVER_MAX + 1):
        f.arrive(1, req(f"p{i}", f"s{i}", home=f"10.0.{i % 2}.1:8000", priority=10))
    f.arrive(0, req("low", "t0", priority=0))
    f.step(1)
    f.free = 1
    f.step(0)
    assert f.sent == [(0, "low")], f.sent
