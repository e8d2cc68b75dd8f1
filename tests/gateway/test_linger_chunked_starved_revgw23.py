"""Review s23-rev-gw23 F2: the linger pace's strict order (smallest announced body first, chunked last,
no aging) starves an honest client refused for a chunked body for as long as any flooder keeps sending,
whatever it announced: the flooders re-queue after every read (each announced 100 MB, so each may linger
its whole ``LINGER_S``) and always sort before ``math.inf``. On 51c4190c (arrival order) the chunked
client had 1/(K+1) of the turns; at 83f8785f it has none, so it is cut at the linger's end without its
413 read (the failure the s22 note fixed for announced bodies). Fake transports as the s23gw test
(``linger_turns``); no clock."""

from __future__ import annotations

import pytest

from gateway.linger_turns import front_in_debt, head, no_timer, one_turn, requeue, waiting

pytestmark = pytest.mark.asyncio
K = 8


async def test_a_chunked_honest_client_gets_a_turn_under_a_flood_that_keeps_sending() -> None:
    front = front_in_debt()
    try:
        flood = [await waiting(front, head(100_000_000)) for _ in range(K)]
        honest = await waiting(front, head(None))
        no_timer(front)
        got_turn = False
        for _ in range(4 * (K + 1)):  # (arrival order: its turn within K + 1)
            one_turn(front)  # (room for one read: one let on)
            if honest[1].reading:
                got_turn = True
                break
            for proto, t in flood:
                if t.reading:
                    requeue(front, proto, t)
        # FAILS on main 470c6a1c (and at 83f8785f): every turn goes to a flooder (100 MB < inf),
        # the chunked client never reads
        assert got_turn, "the chunked honest client never got a turn in 4(K+1) turns"
    finally:
        front.close_all()
