"""Where one `kvgate bench multiturn` run's hit rate goes, per replica: a timeline in bins of virtual time
(to see where a congestion episode starts) and where the chat sessions were started and lost their
context (to see whether a policy packs growing sessions onto a few replicas).

    PYTHONPATH=src python scripts/cold_spread_trace.py FAMILY QPS SEED POLICY [BIN_S]

Timeline, per bin and replica: requests sent there by class (``s`` session turn, ``b`` burst request,
``o`` one-off) as ``sent/cold``, cold meaning no engine held 30% of the prompt at its arrival (engine
truth, not the picker's index); ``c`` prompt tokens computed there (uncached); ``h`` the engine's hit
rate on what it scheduled; ``q`` the largest waiting queue sampled; ``R`` (policies with the cost
scorer's coldSpread) its reuse rate there, prompt tokens per second. Each line starts with the p90 TTFT
of the requests that arrived in that bin, fleet-wide.

Sessions, per replica: the sessions whose first turn was sent there, the later turns whose previous
turn was there, and how many of those found the context lost everywhere (no engine held 30% of the
prompt: the whole context is computed again), with their prompt tokens.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from script_usage import usage_or_exit

COLD = 0.3  # a prompt no engine holds this share of is cold (as the cost scorer's COLD_MATCH)


@dataclass(slots=True)
class SessionTally:
    """Per replica: sessions started there, later turns whose previous turn went there, and those of
    them whose context was lost everywhere (count, prompt tokens)."""

    replicas: int
    started: list[int] = field(init=False)
    turns: list[int] = field(init=False)
    lost: list[int] = field(init=False)
    lost_tokens: list[int] = field(init=False)
    _last: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.replicas
        self.started, self.turns, self.lost, self.lost_tokens = [0] * n, [0] * n, [0] * n, [0] * n

    def turn(self, session: str, replica: int, prompt: int, best_cached: int) -> None:
        """A turn of ``session`` sent to ``replica``; ``best_cached``: the most of its ``prompt`` tokens
        any engine held at its arrival."""
        prev = self._last.get(session)
        if prev is None:
            self.started[replica] += 1
        else:
            self.turns[prev] += 1
            if best_cached < COLD * prompt:
                self.lost[prev] += 1
                self.lost_tokens[prev] += prompt
        self._last[session] = replica

    def lines(self) -> list[str]:
        return [
            f"  replica {i}: sessions started {self.started[i]}, later turns {self.turns[i]}, context lost "
            f"{self.lost[i]} ({self.lost_tokens[i] / 1000:.0f}k prompt tokens)"
            for i in range(self.replicas)
        ] + [f"  all: context lost {sum(self.lost)} of {sum(self.turns)} later turns"]


def main() -> None:
    usage_or_exit(__doc__, 4)
    from kvgate.bench.mixed import FAMILIES
    from kvgate.bench.multiturn import mixed_sim
    from kvgate.bench.workloads import RequestSpec
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
    from kvgate.sim.kvcache import xxhash64_chain

    fam = FAMILIES[sys.argv[1]]
    qps, seed, policy = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    width = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
    sim = mixed_sim(fam, policy, qps, seed)
    engines = [r.engine for r in sim.replicas]
    n_rep = len(engines)
    bs = engines[0].config.block_size
    cost = sim.director.handle.find(KVGateCostScorer)
    spread = cost is not None and cost.cold_spread
    sessions = SessionTally(n_rep)
    sent: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    arrived: dict[str, tuple[int, float]] = {}
    ttft: dict[int, list[float]] = defaultdict(list)
    qmax: dict[tuple[int, int], int] = defaultdict(int)
    stats: dict[tuple[int, int], tuple[int, int]] = {}
    reuse: dict[tuple[int, int], float] = {}
    arrive = sim._arrive
    end = sim.cfg.warmup + sim.cfg.duration

    def watch(spec: RequestSpec) -> None:
        rid = f"r{sim._n}"
        now = sim.clock.now
        ids = spec.prompt_ids
        n = (len(ids) - 1) // bs
        hashes = xxhash64_chain(None, ids[: n * bs], bs, None)
        best = max(len(e.pool.lookup(hashes, n)) for e in engines) * bs
        arrive(spec)
        live = sim._live.get(rid)
        if live is None:
            return
        if spec.session:
            sessions.turn(spec.session, live.index, len(ids), best)
        b = int(now // width)
        c = "s" if spec.session else ("b" if spec.group.startswith("t") else "o")
        d = sent[(b, live.index)]
        d[c] += 1
        if best < COLD * len(ids):
            d[c + "*"] += 1
        arrived[rid] = (b, now)

    def sample() -> None:
        now = sim.clock.now
        b = int(now // width)
        for i, e in enumerate(engines):
            s = e.stats()
            qmax[(b, i)] = max(qmax[(b, i)], s.num_waiting)
            stats[(b, i)] = (s.prefix_cache_hits, s.prefix_cache_queries)
            if spread:
                assert cost is not None
                reuse[(b, i)] = cost.reuse_rate(sim.endpoints[i].address, now)
        if sim._live or now < end:
            sim.clock.call_later(0.25, sample)

    first = sim._on_first_token

    def on_first(s: Any, t: float) -> None:
        got = arrived.pop(s.request_id, None)
        if got is not None:
            ttft[got[0]].append(t - got[1])
        first(s, t)

    sim._arrive = watch  # type: ignore[method-assign]
    for rep in sim.replicas:  # they hold the callback they were built with
        rep.on_first_token = on_first
    sim.clock.call_at(0.0, sample)
    row = sim.run().row
    head = f"{policy} {fam.name}/{seed} @ {qps:g} req/s"
    print(f"{head}: p90 {row['ttft_p90']:.3f} s, hit {row['prefix_hit_rate']:.3f}")
    prev = [(0, 0)] * n_rep
    for b in range(int((end + 10) // width) + 1):
        cells = []
        for i in range(n_rep):
            d = sent.get((b, i), {})
            h, q = stats.get((b, i), prev[i])
            dh, dq = h - prev[i][0], q - prev[i][1]
            prev[i] = (h, q)
            mix = " ".join(f"{c}{d.get(c, 0)}/{d.get(c + '*', 0)}" for c in "sbo")
            r = f" R{reuse.get((b, i), 0.0) / 1000:.1f}k" if spread else ""
            cells.append(f"{mix} c{(dq - dh) / 1000:.1f}k h{dh / max(1, dq):.2f} q{qmax.get((b, i), 0)}{r}")
        v = sorted(ttft.get(b, []))
        p = v[int(0.9 * len(v))] if v else 0.0
        print(f"{b * width:5.0f}s p90 {p:5.2f} | " + " | ".join(cells))
    print("sessions (measured and warm-up turns):")
    print("\n".join(sessions.lines()))


if __name__ == "__main__":
    main()
