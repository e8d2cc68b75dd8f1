"""A steady pass of the shared in-flight table skips a key whose InFlight and other workers' rows did not
change since its last fold (session 36, B: a 5 ms pass over 1,024 endpoints took longer than 5 ms). The
skip must lose nothing: 3 workers on one real segment, each with its own requests at overlapping
endpoints, counts changed at random between passes (on one worker at a time, some fields only, a worker's
death); once every worker has synced twice with nothing changed, each worker's InFlight holds the fleet's
sum of every worker's own requests there, and its running totals never went down. (A guard: it passes
without the skip too; it kills the skip's mutants: see the commit.)"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
from collections.abc import Iterator

from kvgate.datalayer.endpoint import Endpoint
from kvgate.gateway.shared_inflight import SharedInFlight

ADDRS = [f"10.0.0.{k}:8000" for k in range(6)]
# the counts a worker's own requests make (the running totals are checked apart: never down)
OWN = ("requests", "pending_prefill_tokens", "pending_decode_tokens", "decoding", "calls")


@contextlib.contextmanager
def _views(workers: int) -> Iterator[tuple[SharedInFlight, list[SharedInFlight]]]:
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(workers, lock, 8)
    views = [SharedInFlight.attach(owner.name, lock, workers, w, 8) for w in range(workers)]
    try:
        yield owner, views
    finally:
        for v in (*views, owner):
            v.close()


def test_after_quiet_passes_every_worker_holds_the_fleets_sum_of_its_own_requests() -> None:
    rng = random.Random(36)
    with _views(3) as (owner, views):
        # each worker lists 4 of the 6 endpoints (overlapping); ``own[w][a]`` is the truth of its requests
        listed = [ADDRS[:4], ADDRS[1:5], ADDRS[2:]]
        eps = [{a: Endpoint(a) for a in addrs} for addrs in listed]
        own = [{a: dict.fromkeys(OWN, 0) for a in addrs} for addrs in listed]
        last_sent = [dict.fromkeys(addrs, 0) for addrs in listed]
        for rnd in range(60):
            for _ in range(8):  # passes with changes between them, on one worker at a time
                w = rng.randrange(3)
                a = rng.choice(listed[w])
                inf, mine = eps[w][a].inflight, own[w][a]
                for f in OWN:
                    d = rng.randrange(-mine[f], 4)  # (never below its own share: finishes of its requests)
                    if rng.random() < 0.3:
                        d = 0  # (most fields of most keys do not move between two passes)
                    mine[f] += d
                    setattr(inf, f, getattr(inf, f) + d)
                inf.sent_tokens += rng.randrange(3)
                views[w].sync(eps[w].values())
                u = rng.randrange(3)  # (and another worker's pass, seeing it or not)
                views[u].sync(eps[u].values())
            if rnd == 30:  # worker 1 dies and comes back with nothing in flight
                owner.clear_row(1)
                views[1].close()
                views[1] = SharedInFlight.attach(owner.name, owner.lock, 3, 1, 8)
                eps[1] = {a: Endpoint(a) for a in listed[1]}
                own[1] = {a: dict.fromkeys(OWN, 0) for a in listed[1]}
                last_sent[1] = dict.fromkeys(listed[1], 0)
            for _ in range(2):  # quiet: every worker syncs, nothing changes
                for w in range(3):
                    views[w].sync(eps[w].values())
            for w in range(3):
                for a in listed[w]:
                    inf = eps[w][a].inflight
                    want = {f: sum(own[u][a][f] for u in range(3) if a in own[u]) for f in OWN}
                    got = {f: getattr(inf, f) for f in OWN}
                    assert got == want, f"round {rnd}: worker {w} at {a}"
                    assert inf.sent_tokens >= last_sent[w][a], f"round {rnd}: a running total went down"
                    last_sent[w][a] = inf.sent_tokens
