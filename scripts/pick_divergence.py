"""Why one moved pick changes a policy's later picks, or not: the same run replayed with one pick moved
(``luck_band.py``'s replays, both kinds of move), compared request by request with the run as is.

For the k-th session's first turn moved one replica over (k = 1..N), and for each kind of move
(``after``: the picker never sees the move; ``picker``: the picker's own choice is moved, so its state
records it; see ``luck_band.py``), prints per replay:
- the p90 TTFT (ms);
- the share of the later requests (every request that arrived after the moved one, the moved session's
  own turns left out) sent to another replica than in the run as is (best relabelling of the four
  replicas not applied: a permuted run counts as changed);
- the measured bursts that found their tenant's prefix cached nowhere (engine truth, as
  ``cold_bursts.py``), of all measured bursts (a tenant's new burst: its first request after a gap over
  1 s, arriving after the warmup), and the requests in them;
- the largest spread of in-flight requests between replicas seen at a pick (sglang cache_aware's load
  guard only acts past ``balanceAbsThreshold``, 64, and 1.5x).

    PYTHONPATH=src:scripts python scripts/pick_divergence.py FAMILY QPS SEED N POLICY...
"""

from __future__ import annotations

import os
import sys
from typing import Any

from luck_band import MOVES, moved_sim
from script_usage import usage_or_exit
from sim_hooks import Bursts

from kvgate.bench.mixed import BURST_SIZE, FAMILIES, Family


def replay(
    fam: Family,
    policy: str,
    qps: float,
    seed: int,
    k: int,
    move: str,
    duration: float = 120.0,
    warmup: float = 30.0,
) -> dict[str, Any]:
    """One replay: p90, each request's replica (request id -> index), the moved request's id and
    session, the measured bursts and the cold ones, the largest in-flight spread at a pick."""
    sim = moved_sim(fam, policy, qps, seed, k, move, duration, warmup)
    picks: dict[str, int] = {}
    session_of: dict[str, str] = {}
    bursts = Bursts(sim, fam)
    cold = [0]
    measured = [0]
    spread = [0]
    starts: list[str] = []  # request ids of sessions' first turns, in order
    seen: set[str] = set()
    arrive = sim._arrive

    def watch(spec: Any) -> None:
        rid = f"r{sim._n}"
        now = sim.clock.now
        loads = [ep.inflight.requests for ep in sim.endpoints]
        spread[0] = max(spread[0], max(loads) - min(loads))
        if spec.session and spec.session not in seen:
            seen.add(spec.session)
            starts.append(rid)
        b = bursts.see(spec, now)
        if b is not None and b[0]:  # a new burst of this tenant
            measured[0] += now >= sim.cfg.warmup
            cold[0] += b[1] and now >= sim.cfg.warmup
        arrive(spec)
        live = sim._live.get(rid)
        if live is not None:
            picks[rid] = live.index
            if spec.session:
                session_of[rid] = spec.session

    sim._arrive = watch  # type: ignore[method-assign]
    p90 = float(sim.run().row["ttft_p90"])
    moved = starts[k - 1] if k else None
    return {
        "p90": p90,
        "picks": picks,
        "moved": moved,
        "session": session_of.get(moved) if moved else None,
        "sessions": session_of,
        "cold": cold[0],
        "bursts": measured[0],
        "spread": spread[0],
    }


def changed(base: dict[str, Any], run: dict[str, Any]) -> tuple[float, int]:
    """Share of the requests after the moved one (its session's turns left out) sent elsewhere than in
    ``base``, and how many they are."""
    order = sorted(base["picks"], key=lambda rid: int(rid[1:]))
    after = [
        rid
        for rid in order
        if int(rid[1:]) > int(run["moved"][1:]) and run["sessions"].get(rid) != run["session"]
    ]
    diff = sum(base["picks"][rid] != run["picks"].get(rid) for rid in after)
    return (diff / len(after) if after else 0.0), len(after)


def main() -> None:
    usage_or_exit(__doc__, 5)
    fam, qps, seed, n = FAMILIES[sys.argv[1]], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for pol in sys.argv[5:]:
        base = replay(fam, pol, qps, seed, 0, "after")
        name = os.path.basename(pol)
        print(
            f"{fam.name}/{seed} @ {qps:g} {name}: as is p90 {base['p90'] * 1000:.0f} ms, cold bursts "
            f"{base['cold']} of {base['bursts']} ({base['cold'] * BURST_SIZE} requests), "
            f"in-flight spread <= {base['spread']}"
        )
        for move in MOVES:
            for k in range(1, n + 1):
                run = replay(fam, pol, qps, seed, k, move)
                share, count = changed(base, run)
                print(
                    f"  {move:>6} k={k}: p90 {run['p90'] * 1000:.0f} ms, later picks changed "
                    f"{share:.0%} of {count}, cold bursts {run['cold']} of {run['bursts']}, "
                    f"in-flight spread <= {run['spread']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
