"""Bounds for routing on the shared-prefix knee-80% point, as oracles (engine truth, forced picks), not
policies: each customer's requests are forced onto replicas chosen by a rule that sees what no picker
sees (the engines' caches and queues, or the future arrivals), so a policy built on the same idea does
no better than its oracle.

- ``mod``: customer g always on replica g mod 8 (a static, balanced partition: ~19 customers each);
- ``least``: a customer's first request goes to the replica holding the fewest customers (ties: the
  shortest engine queue), and the customer stays there (sglang's "smallest tree" rule, exact);
- ``clair``: a customer's first request (a 7.4k-token cold prefill, ~0.87 s) goes to the replica whose
  customers send the fewest requests in the next second (the arrivals are known: a first run records
  them; the seed fixes them), i.e. where its prefill blocks the fewest warm requests; then it stays;
- ``pair`` / ``pair2``: two fixed homes per customer; each request goes to the home with less prefill
  queued in its engine, a home without the context counting its prefill (``pair``) or twice that
  (``pair2``) extra: second copies made on demand, the warm requests then choosing between two holders.

Prints per seed the p90 and p50 TTFT and the hit rate, and the geometric mean of the p90s.

    PYTHONPATH=src python scripts/placement_oracles.py MODE FIRST_SEED LAST_SEED [QPS]   (QPS 14.14)
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import sys
from typing import Any

from sim_setup import scenario_sim

from kvgate.bench.fleetsim import FleetSim
from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.workloads import random_ids
from kvgate.sim.kvcache import xxhash64_chain

DURATION = 30.0
GROUPS, CONTEXT, PROMPT = 150, 6144, 6144 + 1229  # the scenario's workload (scenarios._kv_wins)


def make(seed: int, qps: float) -> FleetSim:
    return scenario_sim(SCENARIOS["shared-prefix"], "kvgate", qps, seed, DURATION)


def arrivals(seed: int, qps: float) -> list[tuple[float, int]]:
    """(time, customer) of every request of the run (the arrival process does not depend on routing)."""
    sim = make(seed, qps)
    out: list[tuple[float, int]] = []
    arrive = sim._arrive

    def rec(spec: Any) -> None:
        out.append((sim.clock.now, int(spec.group[1:])))
        arrive(spec)

    sim._arrive = rec  # type: ignore[method-assign]
    sim.run()
    return out


def run(mode: str, seed: int, qps: float) -> dict[str, Any]:
    future = arrivals(seed, qps) if mode == "clair" else []
    sim = make(seed, qps)
    eps = sim.endpoints
    engines = [r.engine for r in sim.replicas]
    n = len(eps)
    rng = random.Random(seed)  # the workload's own draw order: the contexts come first
    contexts = [xxhash64_chain(None, random_ids(rng, CONTEXT), 16, None) for _ in range(GROUPS)]
    home: dict[int, int] = {}
    customers = [0] * n
    cur = [0]
    arrive = sim._arrive

    def note(spec: Any) -> None:
        cur[0] = int(spec.group[1:])
        arrive(spec)

    def queued(j: int) -> int:
        e = engines[j]
        return sum(max(0, s.plen - s.num_computed) for s in e._running) + sum(s.plen for s in e._waiting)

    def held(j: int, g: int) -> bool:
        h = contexts[g]
        return len(engines[j].pool.lookup(h, len(h))) == len(h)

    pick = sim.director.pick

    def forced(req: Any, explain: bool = False) -> Any:
        res = pick(req, explain)
        g, now = cur[0], sim.clock.now
        if mode == "mod":
            i = g % n
        elif mode in ("least", "clair"):
            if g not in home:
                if mode == "least":
                    key = lambda j: (customers[j], engines[j].num_waiting + engines[j].num_running)  # noqa: E731
                else:

                    def key(j: int) -> tuple[int, int, int]:
                        soon = sum(1 for t, c in future if now < t <= now + 1.0 and home.get(c) == j)
                        return soon, engines[j].num_waiting + engines[j].num_running, customers[j]

                home[g] = min(range(n), key=key)
                customers[home[g]] += 1
            i = home[g]
        elif mode in ("pair", "pair2"):
            miss = PROMPT if mode == "pair" else 2 * PROMPT
            a, b = g % n, (g + n // 2 + (g // n) % 3) % n
            i = min((a, b), key=lambda j: queued(j) + (0 if held(j, g) else miss))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        return dataclasses.replace(res, endpoints=[eps[i]])

    sim._arrive = note  # type: ignore[method-assign]
    sim.director.pick = forced  # type: ignore[method-assign]
    return sim.run().row


def main() -> None:
    mode, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    qps = float(sys.argv[4]) if len(sys.argv) > 4 else 14.14
    p90s = []
    for seed in range(first, last + 1):
        row = run(mode, seed, qps)
        p90s.append(row["ttft_p90"] * 1000)
        print(
            f"{mode} seed {seed}: p90 {p90s[-1]:.0f} ms, p50 {row['ttft_p50'] * 1000:.0f} ms, "
            f"hit {row['prefix_hit_rate']:.3f}",
            flush=True,
        )
    print(f"{mode}: p90 geomean {statistics.geometric_mean(p90s):.1f} ms")


if __name__ == "__main__":
    main()
