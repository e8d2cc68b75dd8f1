"""CPU per live KV-event batch received by ``KVEventSubscriber`` (socket, wake-up, decode, index), this
tree's against another tree's (``--base-src``), rounds alternating, each in its own process (issue #16).

A publisher process sends ``--batches`` batches as a miss publishes them (one BlockStored of 15 blocks x
128 tokens, vLLM 0.32's map form) ``--gap`` seconds apart (each then wakes the subscriber's event loop on
its own, as a miss's prefill chunks do), or ``--burst N`` at a time (queued together); the subscriber's
process CPU (all its threads, ZMQ's I/O thread included) from its first batch to its last, per batch.
``--mode tokens``: the index keys blocks by their token ids (the precise profile's mode, as ``kvgate serve
--kv-events auto`` runs it), so each batch's 15 block keys are hashed too.

    PYTHONPATH=src python scripts/realvllm/kv_intake_cost.py --base-src <other tree>/src \\
        [--gap 0.003] [--mode tokens]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from kvgate import lifeline

PUB = """
import random, sys, time
import zmq
from kvgate.datalayer.kvwire import BlockStored, encode_batch
addr, n, gap, burst = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(1)
payloads = [encode_batch([BlockStored(block_hashes=[rng.getrandbits(63) for _ in range(15)],
                                      parent_block_hash=None, block_size=128, medium="GPU",
                                      token_ids=[rng.randrange(2048) for _ in range(15 * 128)])], 1.0)
            for _ in range(64)]
s = zmq.Context().socket(zmq.PUB)
s.connect(addr)
time.sleep(1.0)  # the subscription reaches the PUB
for i in range(n):
    s.send_multipart([b"kv", i.to_bytes(8, "big"), payloads[i % len(payloads)]])
    if (i + 1) % burst == 0:
        time.sleep(gap)
time.sleep(0.5)
"""

SUB = """
import asyncio, subprocess, sys, time
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager
n, mode, pub = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

async def main():
    idx = BlockIndex(mode=mode, default_capacity=1 << 20)
    mgr = KVEventsManager(idx)
    sub = await mgr.add("a", "ipc:///tmp/kvgate-intake-%d" % __import__("os").getpid(), bind=True)
    p = subprocess.Popen([*pub[:1], "-c", pub[1], sub.zmq_endpoint, *pub[2:]])
    while sub.stats.batches == 0:
        await asyncio.sleep(0.001)
    c0, b0 = time.process_time(), sub.stats.batches
    while sub.stats.last_seq != n - 1:
        await asyncio.sleep(0.05)
    c, b = time.process_time() - c0, sub.stats.batches - b0
    await mgr.close()
    p.wait()
    assert sub.stats.gaps == 0 and sub.stats.resyncs == 0, sub.stats
    print(c / b * 1e6)

asyncio.run(main())
"""


def one(src: str, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-c", SUB, str(args.batches), args.mode, sys.executable, PUB, str(args.batches),
           str(args.gap), str(args.burst)]  # fmt: skip
    out = subprocess.run(
        lifeline.die_with_parent_argv(cmd), env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-src", required=True, help="the other kvgate tree's src (the code before)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--gap", type=float, default=0.003, help="seconds between sends (or bursts)")
    ap.add_argument("--burst", type=int, default=1, help="batches sent back to back each time")
    ap.add_argument(
        "--mode",
        choices=("engine", "tokens"),
        default="engine",
        help="the index's key mode (tokens: what kvgate serve --kv-events auto runs, keys hashed from "
        "token ids)",
    )
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parents[2] / "src")
    got: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
            got[label].append(one(str(Path(args.base_src).resolve()) if label == "before" else here, args))
    b, a = statistics.median(got["before"]), statistics.median(got["after"])
    for label, xs in got.items():
        print(f"{label:6s}: {statistics.median(xs):6.1f} us CPU per batch (median of {len(xs)} rounds; "
              f"{' '.join(f'{x:.1f}' for x in xs)})")  # fmt: skip
    print(f"after / before: {a / b:.2f}x ({args.batches} batches, {args.burst} per send, {args.gap} s apart)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
