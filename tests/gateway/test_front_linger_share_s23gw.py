"""Under a linger flood an honest client with a small refused body is let on first (session-22 closing
note: an honest client got 1/(K+1) of the linger pace, its turn behind every flooder's). The pace's
waiters take their turns smallest refused body first (what it may send: its ``Content-Length`` and a
head; chunked: unknown, last), equal ones in turn. Fake transports as the s22 pace tests
(``linger_turns``); the turn is one ``_pace_next`` with room for one read, no clock involved."""

from __future__ import annotations

from gateway.linger_turns import front_in_debt, head, no_timer, one_turn, waiting


async def test_the_small_refused_body_reads_before_the_flood_that_waited_longer() -> None:
    """Eight flooders (900 MB announced) wait their turn, then an honest client refused for a 1 MiB
    body; the next turn has room for one read: the honest client's (FAILS on 51c4190c: the first
    flooder's, in arrival order; the honest one's came after all eight)."""
    front = front_in_debt()  # (deep in debt while they queue: no turn comes before the one below)
    try:
        flood = [await waiting(front, head(900_000_000)) for _ in range(8)]
        chunked = await waiting(front, head(None))
        honest = await waiting(front, head(1 << 20))
        no_timer(front)
        one_turn(front)
        assert honest[1].reading, "the honest client's turn"
        assert not any(t.reading for _, t in flood) and not chunked[1].reading
        # The flooders next, in arrival order, and the chunked one (unknown length) last.
        order: list[int] = []
        rest = [t for _, t in [*flood, chunked]]
        for _ in range(9):
            one_turn(front)
            order.append(next(i for i, t in enumerate(rest) if t.reading and i not in order))
        assert order == list(range(9)), order
    finally:
        front.close_all()


def test_the_turn_queue_orders_by_key_then_arrival_and_stays_bounded_under_churn() -> None:
    from kvgate.httpfront.budget import TurnQueue  # (new with the order: not on 51c4190c)

    q: TurnQueue[str] = TurnQueue()
    for name, key in (("a", 5.0), ("b", 1.0), ("c", 5.0), ("d", float("inf"))):
        q.push(name, key)
    q.discard("b")
    assert len(q) == 3 and [q.pop(), q.pop(), q.pop()] == ["a", "c", "d"] and len(q) == 0
    q.push("w", 1.0)
    for i in range(10_000):  # (each joins and leaves before any turn: its entry must not stay)
        q.push(f"x{i}", 0.0)
        q.discard(f"x{i}")
    assert len(q) == 1 and len(q._heap) <= 2 * len(q) + 65
    assert q.pop() == "w"
