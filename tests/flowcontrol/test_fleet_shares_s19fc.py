"""Review s19-fc L4: a worker's share row holds SHARE_FLOWS (64) flows; with more active there, the largest
demands are published (they were the first 64 to become active), so a flood that became active late is in
the fleet's counts, and a flow active here but left out of the row is not counted a second time among the
flows active at the other workers only. Time injected."""

from __future__ import annotations

from flowcontrol.test_fleet_shares import PLAIN, Workers, req
from kvgate.flowcontrol.fleet import SHARE_FLOWS


def test_a_flood_past_the_64th_active_flow_is_in_the_fleet_counts() -> None:
    f = Workers(PLAIN)
    for i in range(SHARE_FLOWS):  # 64 quiet tenants active at worker 1 first
        f.start(1, f"q{i}")
    f.start(1, "flood", 60)  # then the flood, at worker 1
    f.start(0, "flood")  # and one of it at worker 0
    flood = req("next", "flood")
    assert f.one.held_back(flood, f.now)  # one process: 61 of 125 with 65 flows active
    f.sync()
    assert f.ctls[0].fleet is not None
    assert f.ctls[1].held_back(flood, f.now)
    assert f.ctls[0].held_back(flood, f.now)  # (was: the 60 not in worker 1's row, 1 of 125, not over)


def test_a_flow_left_out_of_this_workers_row_is_not_counted_twice() -> None:
    f = Workers(PLAIN)
    for i in range(SHARE_FLOWS):
        f.start(1, f"big{i}", 2)
    f.start(1, "shared")  # the 65th and smallest at worker 1: not in its row
    f.start(0, "shared")  # active at worker 0 too (in its row)
    f.sync()
    shares = f.marks[1].shares
    assert shares.active_extra == 0  # "shared" is active here: 65 flows in all, not 66
    n = len(f.ctls[1]._places) + shares.active_extra
    assert n == len(f.one._places) == SHARE_FLOWS + 1
