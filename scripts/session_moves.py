"""Why a session's turn leaves its replica: for each move in one `kvgate bench multiturn` run, did the
approximate prefix index still know the session's context anywhere (an overload spill), or had it
forgotten it everywhere (the pick was prefix-blind)?

    PYTHONPATH=src python scripts/session_moves.py FAMILY QPS [SEED] [POLICY]
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from script_usage import usage_or_exit
from sim_hooks import cached_tokens
from sim_setup import mixed_run_args

from kvgate.bench.multiturn import mixed_sim
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer


def main() -> None:
    usage_or_exit(__doc__, 2)
    fam, policy, qps, seed = mixed_run_args()
    sim = mixed_sim(fam, policy, qps, seed)
    scorer = sim.director.handle.find(PrefixCacheScorer)
    known: dict[str, bool] = {}
    if scorer is not None:
        prepare = scorer.prepare

        def watch(cycle: Any, endpoints: Any) -> None:
            prepare(cycle, endpoints)
            key = cycle.request.session_key
            if key:
                known[key] = bool(cycle.data["prefix-cache"].matched)

        scorer.prepare = watch  # type: ignore[method-assign]
    holder: dict[str, str] = {}
    moves: Counter[str] = Counter()
    server_held: list[float] = []
    index = {ep.address: i for i, ep in enumerate(sim.endpoints)}
    pick = sim.director.pick

    def traced(req: Any, explain: bool = False) -> Any:
        res = pick(req, explain)
        key = req.session_key
        if key:
            addr = res.primary.address
            if key in holder and holder[key] != addr and sim.clock.now >= sim.cfg.warmup:
                moves["index knew the context" if known.get(key) else "index had forgotten it"] += 1
                # What the previous holder's engine really still cached of this prompt.
                old = sim.replicas[index[holder[key]]].engine
                ids = req.token_ids or []
                (held,) = cached_tokens([old], ids)
                server_held.append(held / max(1, len(ids)))
            holder[key] = addr
        return res

    sim.director.pick = traced  # type: ignore[method-assign]
    row = sim.run().row
    row.update(sim.class_figures())
    print(f"{policy} family {fam.name} seed {seed} at {qps:g} req/s: p90 TTFT {row['ttft_p90']:.3f} s, "
          f"session hit {row['session_hit']:.3f}, moves {row['session_moves']}/{row['session_turns']}: "
          f"{dict(moves)}; share of the prompt the previous holder still cached at a move: mean "
          f"{sum(server_held) / max(1, len(server_held)):.2f}, "
          f"{sum(1 for h in server_held if h > 0.5)} moves left a holder caching > half of it")  # fmt: skip


if __name__ == "__main__":
    main()
