"""Each part of one pick alone, warm, on the gateway-overhead bench's request: what costs what per endpoint.

    PYTHONPATH=src python scripts/pick_parts_cost.py [--endpoints 2,8] [--policy kvgate] [--number 20000]

For each endpoint count, ``kvgate serve``'s pool for ``--policy`` (never scraped, as in
``gateway_path_cost.py``), warmed by 3,000 whole requests (pick, dispatch, whole answer); then the bench's
request (its short prompt, no cached prefix) through each step of the pick by itself, ``timeit``-style:
the candidates (health gate), each producer's ``prepare``, each filter, each scorer's ``score``, the
picker over all-tied totals and over one winner, each post-pick hook, the profile's whole ``run``, and
``Director.pick``; then the accounting of one request (``on_dispatched`` + ``on_whole``, a new request
each time). Each figure is the fastest of 5 repeats of ``--number`` calls (CPU time per call, us): a
diagnostic for where the pick's time goes, not a benchmark of the whole path (``gateway_path_cost.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from typing import Any


def _best(fn: Callable[[], Any], number: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, time.process_time() - t0)
    return best / number * 1e6


def parts(n: int, policy: str, number: int) -> list[tuple[str, float]]:
    from kvgate.bench.gateway_overhead import BODY
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.scheduling.framework import CycleState
    from kvgate.scheduling.types import InferenceRequest, Usage

    prompt = json.loads(BODY)
    urls = ",".join(f"http://127.0.0.1:{18001 + i}" for i in range(n))
    d = build_pools(config_from_flags(urls, ["m"], policy))[0].director
    prof = d.profiles[d._profile_names[0]]

    def req(rid: str) -> InferenceRequest:
        return InferenceRequest(rid, "m", prompt["prompt"], 6, None, prompt["max_tokens"])

    for i in range(3000):
        r = req(f"w{i}")
        ep = d.pick(r).endpoints[0]
        d.on_dispatched(r, ep)
        d.on_whole(r, ep, Usage(6, 8), True)
    tune_gc()
    r = req("b")
    cands = d.candidates(r)
    cyc = CycleState(r, d.clock(), False)
    for p in prof.producers:
        p.prepare(cyc, cands)
    out: list[tuple[str, float]] = [("candidates (health gate)", _best(lambda: d.candidates(r), number))]
    for p in prof.producers:
        out.append(
            (f"prepare {p.name}", _best(lambda p=p: p.prepare(CycleState(r, 1.0, False), cands), number))
        )
    for f in prof.filters:
        out.append((f"filter {f.name}", _best(lambda f=f: f.filter(cyc, list(cands)), number)))
    for s, _w in prof.scorers:
        out.append((f"score {s.name}", _best(lambda s=s: s.score(cyc, cands), number)))
    assert prof.picker is not None
    tied, one = [1.0] * len(cands), [1.0] + [0.5] * (len(cands) - 1)
    out.append(("picker, all tied", _best(lambda: prof.picker.pick(cyc, cands, tied), number)))  # type: ignore[union-attr]
    out.append(("picker, one best", _best(lambda: prof.picker.pick(cyc, cands, one), number)))  # type: ignore[union-attr]
    for h in prof.post_pick:
        out.append((f"post-pick {h.name}", _best(lambda h=h: h.on_picked(cyc, cands[0]), number)))
    out.append(
        ("profile run (all of the above)", _best(lambda: prof.run(CycleState(r, 1.0, False), cands), number))
    )
    out.append(("Director.pick", _best(lambda: d.pick(r), number)))
    ids = itertools.count()
    ep0 = cands[0]

    def account() -> None:
        x = req(f"a{next(ids)}")
        d.on_dispatched(x, ep0)
        d.on_whole(x, ep0, Usage(6, 8), True)

    out.append(("on_dispatched + on_whole (a new request)", _best(account, number)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", default="2,8", help="endpoint counts, comma-separated")
    ap.add_argument("--policy", default="kvgate")
    ap.add_argument("--number", type=int, default=20000, help="calls per repeat")
    args = ap.parse_args()
    counts = [int(x) for x in args.endpoints.split(",")]
    table = {n: parts(n, args.policy, args.number) for n in counts}
    print(f"{'part (us per call)':44s}" + "".join(f"{f'{n} endpoints':>14s}" for n in counts))
    for i, (name, _) in enumerate(table[counts[0]]):
        print(f"{name:44s}" + "".join(f"{table[n][i][1]:14.2f}" for n in counts))


if __name__ == "__main__":
    main()
