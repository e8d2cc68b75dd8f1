"""small36: the committedKv ledger (``src``'s) answers ``bound`` and ``peak`` with the same floats as another
version's (a ``kv_commit.py`` path, e.g. ``git show 810b4af3:src/kvgate/scheduling/plugins/kv_commit.py``)
over random sequences of picks, first tokens and ends (4 endpoints, shared prefixes, retries).

CAP (rev-b36 F4): both run with ``MAX_TRACKED`` = CAP (and ``EVICT_SCAN`` = 4), so picks forget requests;
first tokens then carry no address (no parked resend: one re-adds a request without an eviction, and past
the cap small36's pick forgets down to it where 810b4af3's forgot one, so the tracked sets differ there).

Usage: PYTHONPATH=src python scripts/ledger_equiv_small36.py OLD_KV_COMMIT_PY [SEEDS] [CAP]"""

import importlib.util
import random
import sys
import types

from kvgate.scheduling.plugins import kv_commit as new


def load(path: str, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


old = load(sys.argv[1], "old_kv_commit")
cap = int(sys.argv[3]) if len(sys.argv) > 3 else 0
if cap:
    old.MAX_TRACKED = new.MAX_TRACKED = cap
    old.EVICT_SCAN = new.EVICT_SCAN = 4
capped = 0
for seed in range(int(sys.argv[2]) if len(sys.argv) > 2 else 10):
    rng = random.Random(seed)
    a, b = old.KVCommitLedger(), new.KVCommitLedger()
    eps = [f"e{i}" for i in range(4)]
    live = []
    prefixes = [[rng.getrandbits(64) for _ in range(rng.randint(1, 40))] for _ in range(6)]
    now = 0.0
    checks = 0
    for step in range(6000):
        now += rng.random() * 0.05
        op = rng.random()
        if op < 0.4 or not live:
            rid = f"r{rng.randint(0, 3000)}"
            pre = rng.choice(prefixes)[: rng.randint(0, 40)]
            keys = pre + [rng.getrandbits(64) for _ in range(rng.randint(0, 30))]
            per = rng.choice([16.0, 12.5, 7.3, 16.0])
            args = (rid, rng.choice(eps), keys, per, rng.random() * 50, rng.random() * 500, rng.randint(1, 3))
            a.picked(*args)
            b.picked(*args)
            live.append(rid)
        elif op < 0.6:
            rid = rng.choice(live)
            addr = None if cap else rng.choice(eps)
            a.first_token(rid, now, addr)
            b.first_token(rid, now, addr)
        elif op < 0.85:
            rid = live.pop(rng.randrange(len(live)))
            args = (rid, now, rng.randint(0, 300), rng.random() < 0.8)
            a.finished(*args)
            b.finished(*args)
        else:
            addr = rng.choice(eps)
            keys = rng.choice(prefixes)[: rng.randint(0, 40)] + [rng.getrandbits(64) for _ in range(3)]
            q = (addr, keys, 16.0, 5.0, 100.0)
            assert a.bound(*q) == b.bound(*q), (seed, step)
            assert a.bound(addr) == b.bound(addr), (seed, step)
            assert a.peak(addr, now, *q[1:], 2) == b.peak(addr, now, *q[1:], 2), (seed, step)
            assert a.peak(addr, now) == b.peak(addr, now), (seed, step)
            checks += 1
        assert len(a) == len(b)
        assert not cap or list(a._reqs) == list(b._reqs), (seed, step)
        capped += cap > 0 and len(b) == cap
    print(f"seed {seed}: {checks} queries equal, {len(a)} in flight at the end")
if cap:
    print(f"{capped} steps at the cap ({cap} tracked)")
