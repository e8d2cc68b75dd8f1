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

import sys
from collections.abc import Callable
from typing import Any

from _costkit import fastest_fresh
from tree_runs import requests_rounds_main

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
    from functools import partial

    from kvgate.scheduling import blockhash, prefix

    result: dict[str, Any] = {}
    digest = hashlib.sha256()
    for kind in ("shared", "unique"):
        texts, ids = _workload(kind, requests)
        for name in ("approx text", "vllm 16", "vllm 128"):
            xs: list[Any] = texts if name == "approx text" else ids

            def fresh(name: str = name, xs: list[Any] = xs) -> Callable[[], list[Any]]:
                getattr(prefix, "clear_spans", lambda: None)()
                # a fresh hasher (and span memo) each round
                if name == "approx text":
                    fn: Any = partial(prefix.block_hashes, "m", chunk=64)
                else:
                    fn = blockhash.VLLMBlockHasher(int(name.split()[1])).external_hashes
                return lambda: [fn(x) for x in xs]

            best, got = fastest_fresh(rounds, fresh)
            digest.update(repr(got).encode())
            result[f"{kind} {name}"] = best / len(xs) * 1e6
    result["digest"] = digest.hexdigest()[:16]
    return result


def main() -> int:
    return requests_rounds_main(
        __file__, __doc__, _measure, per="requests", unit="request", places=2, width=20, what="keys"
    )


if __name__ == "__main__":
    sys.exit(main())
