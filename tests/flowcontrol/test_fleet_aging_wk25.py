"""Under ``--workers``, fc25's aging holds between workers too: an overdue head that has reached its
aging time (halfway from its deadline to its TTL) ranks at its band again, on whichever worker it waits;
one not yet aged still gives way to another worker's feasible lower-band head (wk25)."""

from flowcontrol.test_fleet_feasible_bands_fc24b import FeasibleFleet, _req


def _aged(late_at: int, batch_at: int) -> FeasibleFleet:
    f = FeasibleFleet()
    # deadline 101, TTL 30 -> expiry 130, ages at 115.5
    f.arrive(late_at, _req("late", "flood", 0, 1.0, 100.0))
    f.now = 119.0
    f.arrive(batch_at, _req("batch", "batch", -1, 10.0, 119.0))
    f.now = 120.0
    f.step(0)
    f.step(1)
    f.free = 1
    return f


def test_aged_remote_head_goes_first() -> None:
    f = _aged(0, 1)
    f.step(1)
    f.step(0)
    assert f.sent[0] == (0, "late")


def test_aged_local_head_goes_first() -> None:
    f = _aged(1, 0)
    f.step(1)
    f.step(0)
    assert f.sent[0] == (1, "late")


def test_not_aged_yet() -> None:
    f = FeasibleFleet()
    f.arrive(0, _req("late", "flood", 0, 1.0, 100.0))
    f.now = 104.0
    f.arrive(1, _req("batch", "batch", -1, 10.0, 104.0))
    f.now = 105.0
    f.step(0)
    f.step(1)
    f.free = 1
    f.step(1)
    f.step(0)
    assert f.sent[0] == (1, "batch")
