"""rev-e35 F3: bytes the committedKv ledger holds at its cap (4,096 tracked requests, each a distinct
prompt of K chained keys; the keys lists themselves are the scorer's cycle data, counted too as the ledger
keeps them alive), plus 4,096 parked (failed before a first token, never resent). small36: how many stay
tracked is printed (past ``MAX_KEYS`` keys fewer do)."""

import random
import sys
import tracemalloc

from kvgate.scheduling.plugins.kv_commit import KVCommitLedger

K = int(sys.argv[1]) if len(sys.argv) > 1 else 256
rng = random.Random(0)
tracemalloc.start()
led = KVCommitLedger()
for i in range(4096):
    keys = [rng.getrandbits(63) for _ in range(K)]
    led.picked(f"r{i}", f"10.0.0.{i % 8}:8000", keys, 16.0, 0.0, 256.0)
cur, _ = tracemalloc.get_traced_memory()
print(f"K={K}: 4096 offered, {len(led)} tracked: {cur / 2**20:.1f} MiB")
for i in range(4096, 8192):
    keys = [rng.getrandbits(63) for _ in range(K)]
    led.picked(f"r{i}", "10.0.0.9:8000", keys, 16.0, 0.0, 256.0)
    led.finished(f"r{i}", 1.0, 0, ok=False)
cur, _ = tracemalloc.get_traced_memory()
print(f"K={K}: + 4096 parked: {cur / 2**20:.1f} MiB")
