"""CPU per KV-event batch as a miss publishes it (one BlockStored of 15 blocks x 128 tokens, vLLM 0.32's map
form): ``decode_batch`` of this tree against another tree's (``--base-src``), rounds alternating, each in
its own process (issue #16).

    PYTHONPATH=src python scripts/realvllm/kv_decode_cost.py --base-src <other tree>/src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from kvgate import lifeline

ONE = """
import random, time
from kvgate.datalayer.kvwire import BlockStored, decode_batch, encode_batch
rng = random.Random(1)
payloads = [encode_batch([BlockStored(block_hashes=[rng.getrandbits(63) for _ in range(15)],
                                      parent_block_hash=None, block_size=128, medium="GPU",
                                      token_ids=[rng.randrange(2048) for _ in range(15 * 128)])], 1.0)
            for _ in range(200)]
for p in payloads[:20]:
    decode_batch(p)
best = []
for _ in range(5):
    t = time.thread_time_ns()
    for p in payloads:
        decode_batch(p)
    best.append((time.thread_time_ns() - t) / len(payloads) / 1e3)
print(min(best))
"""


def one(src: str) -> float:
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run(
        lifeline.die_with_parent_argv([sys.executable, "-c", ONE]),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-src", required=True, help="the other kvgate tree's src (the code before)")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parents[2] / "src")
    got: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
            got[label].append(one(str(Path(args.base_src).resolve()) if label == "before" else here))
    b, a = statistics.median(got["before"]), statistics.median(got["after"])
    for label, xs in got.items():
        med, lo, hi = statistics.median(xs), min(xs), max(xs)
        print(f"{label:6s} decode_batch: {med:6.1f} us CPU per batch (median of {len(xs)} rounds, "
              f"each the best of 5 x 200 batches; {lo:.1f}-{hi:.1f})")  # fmt: skip
    print(f"after / before: {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
