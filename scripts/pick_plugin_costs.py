"""Where the kvgate policy's pick and accounting spend their time per request, inside the request flow:
``gateway-overhead``'s request shape (its body; ``kvgate serve``'s pool for ``--policy``, two
never-scraped endpoints), one request at a time through ``pick``, ``on_dispatched``, ``on_first_token``
(``learn=False``, as a non-streamed reply) and ``on_finished``, each plugin hook timed where it runs.

    PYTHONPATH=src python scripts/pick_plugin_costs.py [--requests 5000] [--rounds 10] [--policy kvgate]

Each hook is wrapped by a ``perf_counter_ns`` timer (the wrapper's own cost, ~0.15 us a call, is in
every figure); the fastest round counts. Then, on one cycle: the cost scorer's ``score`` timed again
right after its first call in the flow (code and data warm) and its ``costs`` alone, to show how much
of the in-flow figure is the cache coldness the rest of the request leaves behind, not instructions.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from _costkit import request_flow

from kvgate.bench.gateway_overhead import BODY
from kvgate.config.gateway import config_from_flags
from kvgate.gateway.cli import build_pools, tune_gc
from kvgate.scheduling.types import Usage

PC = time.perf_counter_ns


def _wrap(acc: dict[str, int], name: str, obj: Any, attr: str) -> None:
    fn = getattr(obj, attr)

    def timed(*a: Any, **k: Any) -> Any:
        t = PC()
        out = fn(*a, **k)
        acc[name] = acc.get(name, 0) + PC() - t
        return out

    setattr(obj, attr, timed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000, help="requests per round")
    p.add_argument("--rounds", type=int, default=10, help="rounds (the fastest counts)")
    p.add_argument("--policy", default="kvgate", help="the pool's policy")
    args = p.parse_args()
    prompt = json.loads(BODY)
    cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], args.policy)
    d = build_pools(cfg)[0].director
    prof = d.profiles["default"]
    acc: dict[str, int] = {}
    hooks = [("producer.prepare", pr, "prepare") for pr in prof.producers]
    hooks += [(f"score {type(s).__name__}", s, "score") for s, _ in prof.scorers]
    hooks += [(f"filter {type(f).__name__}", f, "filter") for f in prof.filters]
    hooks += [("picker.pick", prof.picker, "pick")]
    hooks += [(f"on_picked {type(h).__name__}", h, "on_picked") for h in prof.post_pick]
    for obs in d._observers:
        hooks += [(f"on_finished {type(obs).__name__}", obs, "on_finished")]
    for obs in d._usage_observers:
        hooks += [(f"on_usage {type(obs).__name__}", obs, "on_usage")]
    hooks += [("speed.observe", d.speed, "observe")]
    one = request_flow(d, prompt, Usage(6, 8))

    for i in range(3000):
        one(i)
    for name, obj, attr in hooks:
        _wrap(acc, name, obj, attr)
    tune_gc()
    best: dict[str, float] = {}
    for k in range(args.rounds):
        acc.clear()
        t0 = PC()
        for i in range(args.requests):
            one((k + 1) * 10**7 + i)
        total = (PC() - t0) / args.requests / 1000
        if total < best.get("request (pick + accounting, wrappers included)", float("inf")):
            best = {"request (pick + accounting, wrappers included)": total}
            best.update({n: v / args.requests / 1000 for n, v in acc.items()})
    for name, us in best.items():
        print(f"{name:55s} {us:7.2f} us")
    print(f"{'hooks together':55s} {sum(v for n, v in best.items() if not n.startswith('request')):7.2f} us")
    scorer = prof.scorers[0][0] if prof.scorers else None
    if scorer is not None and hasattr(scorer, "costs"):
        inner = type(scorer).score.__get__(scorer)
        spent = [0, 0, 0]  # the first call, the same call again, ``costs`` alone

        def twice(cycle: Any, eps: Any) -> Any:
            t = PC()
            out = inner(cycle, eps)
            t1 = PC()
            inner(cycle, eps)
            t2 = PC()
            scorer.costs(cycle, eps)
            spent[0] += t1 - t
            spent[1] += t2 - t1
            spent[2] += PC() - t2
            return out

        scorer.score = twice
        n = args.requests
        fastest = [float("inf")] * 3
        for k in range(args.rounds):
            spent[:] = [0, 0, 0]
            for i in range(n):
                one((k + 1) * 10**9 + i)
            fastest = [min(f, v / n / 1000) for f, v in zip(fastest, spent, strict=True)]
        first, again, alone = fastest
        name = type(scorer).__name__
        print(f"{name}.score in the flow {first:.2f} us, again on the same cycle {again:.2f} us,")
        print(f"  its costs() alone {alone:.2f} us (fastest round of each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
