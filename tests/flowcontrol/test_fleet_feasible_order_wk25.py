"""The fleet's order between workers as one process's ``slo-feasible`` order (session 25, wk25): beside
the two cases of ``test_fleet_feasible_bands_fc24b.py``, the mark's deadline is judged when it is read (a
head that can still make its SLO when published and is past it a moment later goes after a lower band's
feasible head, as one process at that instant), the heads past their deadline keep strict priority among
themselves, a mark whose head is past its deadline is rewritten when a lower band's request queues, and
orderings other than ``slo-feasible`` are untouched. The first test fails on main 0cfe18cf; the others
pass there (strict priority gives their order) and guard the parts of the fix that could break it. No
process is started; time is injected."""

from __future__ import annotations

from flowcontrol.test_fleet_feasible_bands_fc24b import FeasibleFleet, _req


def test_a_mark_read_after_its_heads_deadline_passed_is_overdue() -> None:
    """Worker 0's flood request (deadline 105.1) can still make it when worker 0 publishes at 105.0; at
    105.2 (the mark still fresh) it cannot: one process would send worker 1's batch request first."""
    f = FeasibleFleet()
    f.now = 104.1
    f.arrive(0, _req("flood", "flood", 0, 1.0, 104.1))
    f.arrive(1, _req("batch", "batch", -1, 10.0, 104.1))
    f.now = 105.0
    f.step(0)
    f.step(1)
    f.now = 105.2
    f.free = 1
    f.ds[1].step()  # (worker 0 has not run a pass since 105.0)
    assert f.sent == [(1, "batch")]


def test_overdue_heads_keep_strict_priority_between_workers() -> None:
    """Both heads past their deadline: the higher band first, as one process's late tier."""
    f = FeasibleFleet()
    f.arrive(0, _req("flood", "flood", 0, 1.0, 100.0))
    f.arrive(1, _req("batch", "batch", -1, 1.0, 100.5))
    f.now = 105.0
    f.step(0)
    f.step(1)
    f.free = 1
    f.step(1)
    f.step(0)
    assert f.sent[0] == (0, "flood")


def test_a_lower_bands_arrival_rewrites_an_overdue_mark() -> None:
    """Worker 0's mark names its overdue flood head; a batch request (band -1, can make its SLO) queues at
    worker 0: it now goes first there, so the mark must say so at once, and worker 1's band -2 request
    waits for it (a mark kept as it was would let band -2 go: the overdue head goes after it)."""
    f = FeasibleFleet()
    f.arrive(0, _req("flood", "flood", 0, 1.0, 100.0))
    f.now = 104.0
    f.arrive(1, _req("low", "low", -2, 10.0, 104.0))
    f.now = 105.0
    f.step(0)
    f.step(1)
    f.arrive(0, _req("batch", "batch", -1, 10.0, 105.0))  # (queued: the pool is full; no pass)
    f.free = 1
    f.step(1)
    f.step(0)
    assert f.sent[0] == (0, "batch")


def test_other_orderings_keep_strict_priority_for_overdue_heads() -> None:
    """``slo-deadline``: no late tier in one process, none across the workers."""
    f = FeasibleFleet(ordering="slo-deadline")
    f.arrive(0, _req("flood", "flood", 0, 1.0, 100.0))
    f.now = 104.0
    f.arrive(1, _req("batch", "batch", -1, 10.0, 104.0))
    f.now = 105.0
    f.step(0)
    f.step(1)
    f.free = 1
    f.step(1)
    f.step(0)
    assert f.sent[0] == (0, "flood")


def test_the_fleet_never_stalls_on_its_marks() -> None:
    """Liveness (no cycle): random arrivals of three bands at two workers, SLOs of 0.5-20 s, time moving
    so heads fall past their deadlines; at every step one slot frees and both workers run a pass: the slot
    is taken whenever anything waits (a worker's gate and its mark judge its head alike, so two heads
    never each wait for the other's)."""
    import random

    for seed in range(20):
        rnd = random.Random(seed)
        f = FeasibleFleet()
        n = 0
        for _ in range(60):
            for _ in range(rnd.randrange(3)):
                n += 1
                at = f.now - rnd.random() * 3.0
                r = _req(
                    f"r{n}", f"f{rnd.randrange(4)}", rnd.choice((1, 0, -1)), rnd.choice((0.5, 2.0, 20.0)), at
                )
                f.arrive(rnd.randrange(2), r)
            f.now += rnd.choice((0.01, 0.2, 1.0))
            for w in (0, 1):
                f.step(w)
            waiting = len(f.ds[0]) + len(f.ds[1])
            f.free = 1
            sent = len(f.sent)
            order = (0, 1) if rnd.random() < 0.5 else (1, 0)
            for w in order:
                f.step(w)
            for w in order:
                f.step(w)
            assert not waiting or len(f.sent) == sent + 1, (seed, f.now, waiting)
            f.free = 0
