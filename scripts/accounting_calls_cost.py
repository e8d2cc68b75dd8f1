"""The picker's calls on ``kvgate bench gateway-overhead``'s request, one by one, in one process.

    PYTHONPATH=src python scripts/accounting_calls_cost.py [--policy kvgate] [--requests 5000] [--rounds 7]

Builds ``kvgate serve``'s pool for ``--policy`` (two never-scraped endpoints) and runs the bench's
request (its short prompt, ``max_tokens``, 8 output tokens) through the calls a non-streamed answer
makes: the ``InferenceRequest``, ``Director.pick``, ``on_dispatched``, then ``on_whole`` where the tree
has it (the gateway's ``_whole`` calls it since session 23) or ``on_first_token(learn=False)`` and
``on_finished``. Each call is timed on its own (``perf_counter_ns``, ~70 ns a reading included); per
call, the fastest of ``--rounds`` rounds of ``--requests`` requests, in us. Run it under each tree's
``PYTHONPATH`` to compare them (one process each; alternate them, as the figures move with the load).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", default="kvgate")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()

    from kvgate.bench.gateway_overhead import BODY
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.scheduling.types import InferenceRequest, Usage

    prompt = json.loads(BODY)
    cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], args.policy)
    d: Any = build_pools(cfg)[0].director
    whole = hasattr(d, "on_whole")
    pc = time.perf_counter_ns
    names = ["request", "pick", "on_dispatched"] + (
        ["on_whole"] if whole else ["on_first_token", "on_finished"]
    )

    def rounds(n: int, start: int) -> list[float]:
        t = [0] * len(names)
        text, max_tokens = prompt["prompt"], prompt["max_tokens"]
        for i in range(start, start + n):
            a = pc()
            r = InferenceRequest(f"b{i}", "m", prompt_text=text, prompt_tokens=6, max_tokens=max_tokens)
            b = pc()
            ep = d.pick(r).endpoints[0]
            c = pc()
            d.on_dispatched(r, ep)
            e = pc()
            if whole:
                d.on_whole(r, ep, Usage(6, 8), True)
                f = g = pc()
            else:
                d.on_first_token(r, ep, learn=False)
                f = pc()
                d.on_finished(r, ep, Usage(6, 8), True)
                g = pc()
            t[0] += b - a
            t[1] += c - b
            t[2] += e - c
            t[3] += f - e
            if not whole:
                t[4] += g - f
        return [x / n / 1000 for x in t]

    rounds(args.requests, 0)
    tune_gc()
    best = [float("inf")] * len(names)
    for k in range(args.rounds):
        best = [min(x, y) for x, y in zip(best, rounds(args.requests, (k + 1) * args.requests), strict=True)]
    acct = sum(best[2:])
    print(
        f"{args.policy}: "
        + ", ".join(f"{n} {x:.2f}" for n, x in zip(names, best, strict=True))
        + f"; accounting {acct:.2f} us/request"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
