"""Where a policy's second copies of a warm tenant prefix come from, family c (engine truth vs the index).

    PYTHONPATH=src:scripts python scripts/copy_origins_s33.py POLICY FIRST LAST [--list]

Follows, per seed (family c at 6.992 req/s, ``gap_attr_s32.py``'s run), every burst request whose 4k
prefix some engine held whole at its arrival (``burst-warm``) and that went to a replica holding less
than the best engine (cause ``miss``: a second copy). At its pick, the cost scorer's candidates are
recorded: what the approximate index believed each held, what each engine held (its pool looked up with
the prompt's block hashes), prefill tokens dispatched there and not started, requests in flight, costs.
Each copy is then ``index-held`` (the index believed the chosen replica held the prefix as well as any:
a copy still being computed there, or one the engine evicted) or ``spill`` (the cost chose a replica the
index knew held less), and ``slow`` if its TTFT was 300 ms or more. ``--list`` prints each copy.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import gap_attr_s32 as gap
import request_traces
from script_usage import usage_or_exit

from kvgate.scheduling.plugins import kvgate_cost
from kvgate.scheduling.plugins.prefix_cache import prefix_match
from kvgate.sim.kvcache import xxhash64_chain

Pick = tuple[list[float], list[int], list[int], list[int], list[float]]


def record(engines: list[Any], log: dict[str, Pick]) -> None:
    """Wrap ``KVGateCostScorer.costs`` to keep each pick's candidates (index, engine, queue, costs)."""
    costs = kvgate_cost.KVGateCostScorer.costs

    def wrapped(self: Any, cycle: Any, endpoints: Any) -> list[float]:
        out = costs(self, cycle, endpoints)
        m = prefix_match(cycle)
        p = cycle.request.prompt_tokens
        per = p / len(m.hashes) if m is not None and m.hashes else 0.0
        held = [m.matched.get(e.address, 0) * per if m is not None and per else 0.0 for e in endpoints]
        ids = cycle.request.token_ids
        eng: list[int] = []
        if ids and engines:
            bs = engines[0].config.block_size
            n = (len(ids) - 1) // bs
            hashes = xxhash64_chain(None, list(ids[: n * bs]), bs, None)
            eng = [len(e.pool.lookup(hashes, n)) * bs for e in engines]
        ahead = [e.inflight.pending_prefill_tokens for e in endpoints]
        log[cycle.request.request_id] = (held, eng, ahead, [e.inflight.requests for e in endpoints], out)
        return out

    kvgate_cost.KVGateCostScorer.costs = wrapped  # type: ignore[method-assign]


def main() -> None:
    show = "--list" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--list"]
    usage_or_exit(__doc__, 3)
    policy, first, last = argv[0], int(argv[1]), int(argv[2])
    engines: list[Any] = []
    log: dict[str, Pick] = {}
    record(engines, log)
    total: Counter[tuple[str, bool]] = Counter()
    for seed in range(first, last + 1):
        log.clear()
        _, make_sim = request_traces.build(["mixed", "c", "6.992", str(seed), policy])

        def make(pol: str, make_sim: Any = make_sim) -> Any:
            sim, classify = make_sim(pol)
            engines[:] = [r.engine for r in sim.replicas]
            return sim, classify

        row, out = gap.run(make, policy)
        per: Counter[tuple[str, bool]] = Counter()
        for rid, (r, klass, cause, _) in out.items():
            if klass != "burst-warm" or cause != "miss" or rid not in log:
                continue
            held, eng, ahead, load, costs = log[rid]
            i = r.replica
            kind = "index-held" if held[i] >= max(held) - 1 else "spill"
            per[kind, r.ttft >= 0.3] += 1
            if show:
                print(
                    f"  {seed} {rid} at {r.at:6.1f} s ttft {r.ttft * 1000:4.0f} ms {kind:10} to {i}: index "
                    f"{[round(h) for h in held]} engines {eng} ahead {ahead} requests {load} "
                    f"costs {[round(c) for c in costs]}"
                )
        print(f"seed {seed}: p90 {row['ttft_p90'] * 1000:.0f} ms; copies {_fmt(per)}", flush=True)
        total.update(per)
    print(f"all seeds: copies {_fmt(total)}")


def _fmt(c: Counter[tuple[str, bool]]) -> str:
    return ", ".join(
        f"{kind} {c[kind, True] + c[kind, False]} ({c[kind, True]} slow)" for kind in ("index-held", "spill")
    )


if __name__ == "__main__":
    main()
