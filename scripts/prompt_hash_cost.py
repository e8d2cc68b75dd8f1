"""CPU of hashing one request's prompt into prefix-cache block keys: this tree against another.

    PYTHONPATH=src python scripts/prompt_hash_cost.py --base-src <other checkout>/src \\
        [--requests 2000] [--rounds 5] [--repeats 3]

The two hashers a pick runs on a prompt: the approximate index's chained xxh64 keys
(``scheduling.prefix.block_hashes``: text, 64-character blocks, at most 256) and vLLM's block hashes
(``scheduling.blockhash.VLLMBlockHasher.external_hashes``, sha256 of pickle, the precise scorer's keys;
16- and 128-token blocks). Two workloads, seeded: ``shared``, 8 tenants, each request a tenant's ~2k-token
(~8k-character) context plus a unique question (the ``vs_sglang.py`` shape: prefix routing's traffic), and
``unique``, every request's context its own (nothing repeats: what a memo costs when it never hits).

Each repeat runs the base tree then this tree in fresh processes: per cell, ``--rounds`` rounds of
``--requests`` requests from a fresh hasher state each (the first requests of a round are the cold start),
CPU time (``process_time``) per request, a process's figure its fastest round. Prints every process's
figures, the medians over repeats and the ratios (this / base). Both trees must return the same keys
(a digest of every key of the first round is compared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tree_runs import compare, run_in_tree

WORDS = ("the", "of", "prefix", "cache", "block", "token", "model", "route", "engine", "queue", "tenant")


def _workload(kind: str, requests: int) -> tuple[list[str], list[list[int]]]:
    import random

    rng = random.Random(11)
    tenants = 8 if kind == "shared" else requests
    texts = [" ".join(rng.choice(WORDS) for _ in range(1500)) for _ in range(min(tenants, 64))]
    ids = [[rng.randrange(150_000) for _ in range(1900)] for _ in range(min(tenants, 64))]
    out_t, out_i = [], []
    for r in range(requests):
        t = r % tenants
        q = f" question {r}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 30)))
        if kind == "shared":
            out_t.append(texts[t] + q)
            out_i.append(ids[t] + [rng.randrange(150_000) for _ in range(len(q) // 4)])
        else:  # a context of its own: a fresh start word shifts every block
            out_t.append(f"{r} " + texts[r % len(texts)] + q)
            out_i.append([r, *ids[r % len(ids)], *(rng.randrange(150_000) for _ in range(len(q) // 4))])
    return out_t, out_i


def _measure(requests: int, rounds: int) -> dict[str, Any]:
    import hashlib
    import time
    from functools import partial

    from kvgate.scheduling import blockhash, prefix

    result: dict[str, Any] = {}
    digest = hashlib.sha256()
    for kind in ("shared", "unique"):
        texts, ids = _workload(kind, requests)
        for name in ("approx text", "vllm 16", "vllm 128"):
            best = float("inf")
            for k in range(rounds):
                getattr(prefix, "clear_spans", lambda: None)()
                # a fresh hasher (and span memo) each round
                if name == "approx text":
                    fn: Any = partial(prefix.block_hashes, "m", chunk=64)
                    xs: list[Any] = texts
                else:
                    fn, xs = blockhash.VLLMBlockHasher(int(name.split()[1])).external_hashes, ids
                t0 = time.process_time()
                got = [fn(x) for x in xs]
                best = min(best, (time.process_time() - t0) / len(xs) * 1e6)
                if k == 0:
                    digest.update(repr(got).encode())
            result[f"{kind} {name}"] = best
    result["digest"] = digest.hexdigest()[:16]
    return result


def _run(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    return run_in_tree(__file__, src, ["--_measure", str(args.requests), str(args.rounds)], 900)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        print(json.dumps(_measure(int(sys.argv[2]), int(sys.argv[3]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-src", type=Path, required=True, help="the other tree's src/ (the baseline)")
    p.add_argument("--requests", type=int, default=2000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per process (its fastest counts)")
    p.add_argument("--repeats", type=int, default=3, help="processes per tree, alternating")
    args = p.parse_args()
    return compare(
        args.base_src, args.repeats, lambda src: _run(src, args),
        unit="request", places=2, width=20, what="keys",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
