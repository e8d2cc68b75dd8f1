"""The linger pace's turn order ages (review s23-rev-gw23 F2): every other turn is the longest waiting
one's, so a waiter of the largest key (a chunked refusal: unknown length) has its turn within 2(W + 1)
turns, W the waiters before it, however many smaller keys keep coming; smallest-first still holds on the
other turns. Both of the queue's lists stay bounded under churn. Pure data structure: no clock."""

from __future__ import annotations

import math

from kvgate.httpfront.budget import TurnQueue


def test_the_largest_key_has_its_turn_while_smaller_ones_keep_coming() -> None:
    q: TurnQueue[str] = TurnQueue()
    flood = [f"f{i}" for i in range(32)]
    for name in flood:
        q.push(name, 100e6)
    q.push("chunked", math.inf)
    turns = 0
    while True:
        turns += 1
        got = q.pop()
        if got == "chunked":
            break
        q.push(got, 100e6)  # (a flooder read its turn and waits again)
        assert turns <= 2 * (len(flood) + 1), "the largest key never had its turn"  # FAILS on main
    assert len(q) == len(flood)


def test_the_smallest_key_still_goes_first_every_other_turn() -> None:
    q: TurnQueue[str] = TurnQueue()
    for i in range(8):
        q.push(f"f{i}", 900e6)
    q.push("honest", float(1 << 20))
    assert q.pop() == "honest"  # (the first turn is by key)
    q.push("honest", float(1 << 20))
    assert q.pop() == "f0"  # (the next, by arrival)
    assert q.pop() == "honest"


def test_both_lists_stay_bounded_under_churn() -> None:
    q: TurnQueue[int] = TurnQueue()
    for i in range(100):
        q.push(i, float(i))
    for i in range(100, 20_100):  # (each turn leaves a stale entry in the other list)
        q.push(i, float(i))
        q.pop()
        assert len(q._heap) <= 2 * len(q) + 65 and len(q._arrival) <= 2 * len(q) + 65
    assert len(q) == 100
