"""Per-request cost of a door's model-label bookkeeping (``kvgate.openai.labels.ModelLabels``).

    PYTHONPATH=src python scripts/model_labels_cost.py [--n 100000] [--repeats 7]

Microseconds per ``hold`` + ``label`` + ``drop`` of a name the config does not know (what ``--clusters``
does for every request, ``kvgate epp`` for model and target), nothing owed (no name retired with requests
in flight: the steady state), in one task; the best of ``--repeats`` runs of ``--n``. Run it against
another tree with that tree's ``src`` on ``PYTHONPATH`` (review s18-doors L1: 8325f51 0.49 us, doors18's
numbering of every hold 2.1 us). The spread between runs on a loaded machine is tens of percent.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from kvgate.openai.labels import ModelLabels


async def run(n: int, repeats: int) -> float:
    labels = ModelLabels(["configured"])
    best = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            labels.hold("x")
            labels.label("x")
            labels.drop("x")
        best.append((time.perf_counter() - t) / n * 1e6)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    us = asyncio.run(run(args.n, args.repeats))
    print(f"hold + label + drop, best of {args.repeats} x {args.n}: {us:.2f} us")


if __name__ == "__main__":
    main()
