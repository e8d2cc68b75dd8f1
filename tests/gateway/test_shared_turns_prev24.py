"""``kvgate serve --workers N``: a Responses turn's tokens are shared through the fleet's Responses table
(``gateway.shared_responses``), so a follow-up another worker takes is still estimated as its conversation
(prev24; the prefix chain stays in the worker that made the turn). Real shared memory, two worker views."""

from __future__ import annotations

from array import array

from kvgate.gateway.shared_responses import FleetTurns, SharedResponses
from kvgate.openai.responses import Turn


def test_a_turn_finished_on_one_worker_is_counted_on_the_other(
    shared_views: tuple[SharedResponses, SharedResponses, SharedResponses],
) -> None:
    _, w0, w1 = shared_views
    now = [100.0]
    t0, t1 = FleetTurns(w0, 10, lambda: now[0]), FleetTurns(w1, 10, lambda: now[0])
    w0.remember("resp_a", "10.0.0.1:8000", now[0])  # (the home, at the answer's start)
    assert t1.get("resp_a") is None  # (its turn not finished yet)
    t0.remember("resp_a", Turn(1234, array("Q", [7, 8]), 64, False, "m"))
    got = t1.get("resp_a")
    assert got is not None and got.tokens == 1234 and len(got.hashes) == 0  # (the chain stays local)
    own = t0.get("resp_a")
    assert own is not None and list(own.hashes) == [7, 8]
    assert w1.find("resp_a", now[0]) == ("10.0.0.1:8000", None)  # (the home unchanged by the tokens)
    now[0] += w0.ttl_s
    assert t1.get("resp_a") is None  # (expired with its home)
    off = FleetTurns(w1, 0, lambda: now[0])  # (--response-turns 0: nothing kept, nothing read)
    w1.remember("resp_b", "10.0.0.2:8000", now[0])
    off.remember("resp_b", Turn(5, array("Q"), 64, False, "m"))
    assert off.get("resp_b") is None and t0.get("resp_b") is None
