"""CPU of a Responses follow-up's two lookups in ``kvgate serve``'s ``_prepare``, in whichever tree is on
``PYTHONPATH``: the earlier turn and its home (``turns.get`` then the home, the way that tree's proxy
does it), and the follow-up's head key (``follow_up``).

    PYTHONPATH=<tree>/src python scripts/followup_lookup_cost.py [ROUNDS] [HEAD_CHARS]

- ``lookup``: ``--workers 2``'s views (real shared memory): the turn was finished by worker 0, the
  follow-up is read on worker 1 (its own maps empty: the table is read). main scans the table twice
  (``find_tokens``, ``find``), prev25 once (``entry``, the home in the turn).
- ``head``: a follow-up with ``HEAD_CHARS`` (default 65,536) characters of ``instructions``, its earlier
  turn's head the same (main hashes it each time; prev25 compares it with the kept head, ``Leads``).

Prints microseconds of CPU per call, the fastest of ``ROUNDS`` (default 7) rounds of 20,000 (head: 2,000)
calls. Run it once per tree, alternating trees, in one hold of the live lock (docs/scheduling.md).
"""

from __future__ import annotations

import inspect
import os
import sys
from array import array

from _costkit import fastest


def lookup(rounds: int) -> float:
    from kvgate.gateway.shared_responses import FleetHomes, FleetTurns, SharedResponses
    from kvgate.openai.responses import Turn

    owner = SharedResponses.create(2, f"kvgate_cost_rsp_{os.getpid()}")
    try:
        w0 = SharedResponses.attach(owner.shm.name, 2, 0)
        w1 = SharedResponses.attach(owner.shm.name, 2, 1)
        clock = lambda: 100.0  # noqa: E731
        t0, t1 = FleetTurns(w0, 10, clock), FleetTurns(w1, 10, clock)
        homes1 = FleetHomes(w1, clock)
        ids = [f"resp_{i:016x}" for i in range(64)]
        for rid in ids:
            w0.remember(rid, "10.0.0.1:8000", 100.0)
            t0.remember(rid, Turn(1234, array("Q", [7, 8]), 64, False, "m"))
        n = 20_000

        def work() -> None:
            for i in range(n):
                rid = ids[i & 63]
                turn = t1.get(rid)
                # (as each tree's ``Proxy._prepare``: main has no ``Turn.home`` and asks the homes)
                home = getattr(turn, "home", "") if turn is not None else ""
                if not home:
                    home = homes1.home(rid)
                assert home == "10.0.0.1:8000"

        best, _ = fastest(rounds, work)
        for view in (w0, w1):
            view.close()
        return best / n * 1e6
    finally:
        owner.close()


def head(rounds: int, chars: int) -> float:
    import kvgate.openai.responses as responses
    from kvgate.openai.responses import Turn, follow_up
    from kvgate.scheduling.types import InferenceRequest

    lead = ("You are a careful assistant who cites its sources. " * (chars // 50 + 1))[:chars]
    text = lead + "\nuser: and then what happened?"
    leads = responses.Leads() if hasattr(responses, "Leads") else None
    key = leads.key(text, chars, 0) if leads is not None else hash(lead) or 1  # (the first turn's)
    turn = Turn(1234, array("Q", [7, 8]), 64, False, "m", key)
    extra = (leads,) if "leads" in inspect.signature(follow_up).parameters else ()
    req = InferenceRequest("r", "m", prompt_text=text, prompt_tokens=len(text) // 4)
    n = 2_000

    def work() -> None:
        for _ in range(n):
            follow_up(req, True, turn, chars, *extra)
        assert req.conversation is not None and req.conversation.lead_key == key

    best, _ = fastest(rounds, work)
    return best / n * 1e6


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    chars = int(sys.argv[2]) if len(sys.argv) > 2 else 65_536
    print(f"lookup (--workers 2, another worker's turn): {lookup(rounds):.2f} us/follow-up")
    print(f"head ({chars} chars, the turn's head repeated): {head(rounds, chars):.2f} us/follow-up")


if __name__ == "__main__":
    main()
