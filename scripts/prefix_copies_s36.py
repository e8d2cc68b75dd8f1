"""Why a family's cold bursts are cold, and how many copies of each tenant prefix the fleet holds (fam36).

    PYTHONPATH=src:scripts python scripts/prefix_copies_s36.py FAMILY QPS FIRST LAST POLICY... [--list]

Engine truth, per run: a tenant prefix is held by an engine while the block that ends its first
``tenant_prefix - block_size`` tokens is cached there (``Bursts``' cold edge: lose that block and a burst
there recomputes the prefix). Every burst's first request (``Bursts``) is classed

- ``warm``: some engine held its tenant's prefix;
- ``never``: no engine had held it before (the tenant's first burst of the run);
- ``evicted``: an engine had held it and every copy was evicted since.

For an evicted one, the last copy lost is charged to the blocks written at that engine between the
prefix's release there (its last request finished) and its eviction, by what they were for:
``session`` (a chat turn's prompt), ``oneoff`` (a one-off's prompt), ``burst-first`` / ``burst-dup``
(another tenant's prefix, held by no other engine at the write / already held by another engine),
``burst-q`` (a burst's question past its warm prefix), ``*-out`` (generated tokens). Copies: the
time-weighted mean number of engines holding each prefix (measured window), and how many times a copy
was made while another engine held one (``dup made``). One line per seed and a sum per policy.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from script_usage import usage_or_exit
from sim_hooks import Bursts

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim
from kvgate.bench.workloads import RequestSpec
from kvgate.sim.kvcache import BlockPool, xxhash64_chain

CLASSES = (
    "session",
    "session-out",
    "oneoff",
    "oneoff-out",
    "burst-first",
    "burst-dup",
    "burst-q",
    "burst-out",
)

# id(pool) -> its run's allocate, allocate_one, cache_blocks, free_blocks
HOOKS: dict[int, tuple[Any, ...]] = {}


class _Hooked(BlockPool):
    """A pool whose block operations go through the run's hooks (same slots: ``__class__`` is swapped)."""

    __slots__ = ()

    def allocate(self, n: int) -> list[int]:
        return HOOKS[id(self)][0](n)  # type: ignore[no-any-return]

    def allocate_one(self) -> int:
        return HOOKS[id(self)][1]()  # type: ignore[no-any-return]

    def cache_blocks(self, *a: Any) -> None:
        HOOKS[id(self)][2](*a)

    def free_blocks(self, block_ids: Any) -> None:
        HOOKS[id(self)][3](block_ids)


def run(fam: Any, policy: str, qps: float, seed: int, listing: bool) -> dict[str, Any]:
    sim = mixed_sim(fam, policy, qps, seed)
    engines = [r.engine for r in sim.replicas]
    bs = engines[0].config.block_size
    edge_blocks = (fam.tenant_prefix - bs) // bs  # blocks 0..edge_blocks-1 must be cached
    bursts = Bursts(sim, fam)
    cls: dict[str, str] = {}
    key: dict[int, str] = {}  # the edge block's hash -> tenant
    first_key: dict[str, int] = {}
    holders: dict[str, set[int]] = {}
    ever: set[str] = set()
    written = [Counter() for _ in engines]  # blocks allocated per class, cumulative, per engine
    released: dict[tuple[int, str], Counter] = {}  # (engine, tenant) -> ``written`` at the release
    last_loss: dict[str, tuple[float, int, Counter]] = {}  # tenant -> (time, engine, writes that displaced)
    copy_time: Counter = Counter()
    dup_made = Counter()
    t_last = [sim.cfg.warmup]
    out = {"bursts": 0, "warm": 0, "never": 0, "evicted": 0, "blame": Counter(), "dup_made": 0}
    lines: list[str] = []

    def advance(now: float) -> None:
        if now > t_last[0]:
            for t, h in holders.items():
                copy_time[t] += len(h) * (now - t_last[0])
            t_last[0] = now
        elif now < sim.cfg.warmup:
            t_last[0] = sim.cfg.warmup

    def kind_of(s: Any, i: int, first_new: int) -> str:
        """What blocks ``first_new``.. of ``s``'s allocation at engine ``i`` hold."""
        c = cls.get(s.req.request_id, "oneoff")
        if first_new * bs >= s.plen:
            return f"{c}-out"
        if c != "burst":
            return c
        if first_new >= edge_blocks:
            return "burst-q"
        t = key.get(s.hashes[edge_blocks - 1]) if len(s.hashes) >= edge_blocks else None
        others = holders.get(t, set()) - {i} if t else set()
        return "burst-dup" if others else "burst-first"

    for i, eng in enumerate(engines):
        pool = eng.pool

        def wrap(i: int = i, pool: Any = pool) -> None:
            alloc = lambda n: BlockPool.allocate(pool, n)  # noqa: E731
            alloc1 = lambda: BlockPool.allocate_one(pool)  # noqa: E731
            cache = lambda *a: BlockPool.cache_blocks(pool, *a)  # noqa: E731
            free = lambda b: BlockPool.free_blocks(pool, b)  # noqa: E731

            def charge(n: int, got: Any, lost: list[int], f: Any) -> None:
                s = f.f_locals.get("s")
                if s is not None:
                    first = len(f.f_locals["hit"]) if f.f_code.co_name == "_admit" else len(s.blocks)
                    written[i][kind_of(s, i, first)] += n
                for h in lost:
                    t = key[h]
                    now = sim.clock.now
                    advance(now)
                    holders[t].discard(i)
                    base = released.pop((i, t), Counter())
                    last_loss[t] = (now, i, written[i] - base)

            def allocate(n: int) -> list[int]:
                before = [h for h in key if h in pool.cached]
                got = alloc(n)
                charge(n, got, [h for h in before if h not in pool.cached], sys._getframe(2))
                return got

            def allocate_one() -> int:
                if pool._fresh < pool.num_blocks:
                    got = alloc1()
                    charge(1, got, [], sys._getframe(2))
                    return got
                before = [h for h in key if h in pool.cached]
                got = alloc(1)
                charge(1, got, [h for h in before if h not in pool.cached], sys._getframe(2))
                return got[0]

            def cache_blocks(block_ids, hashes, start, end, tokens, lora) -> None:  # type: ignore[no-untyped-def]
                cache(block_ids, hashes, start, end, tokens, lora)
                if start < edge_blocks <= end:
                    t = key.get(hashes[edge_blocks - 1])
                    if (
                        t is not None
                        and pool.cached.get(hashes[edge_blocks - 1]) == block_ids[edge_blocks - 1]
                    ):
                        now = sim.clock.now
                        advance(now)
                        if holders[t] - {i} and now >= sim.cfg.warmup:
                            dup_made[t] += 1
                        holders[t].add(i)
                        ever.add(t)

            def free_blocks(block_ids) -> None:  # type: ignore[no-untyped-def]
                free(block_ids)
                for h, t in key.items():
                    b = pool.cached.get(h)
                    if b is not None and pool.ref[b] == 0 and b in block_ids:
                        released[(i, t)] = written[i].copy()

            HOOKS[id(pool)] = (allocate, allocate_one, cache_blocks, free_blocks)
            pool.__class__ = _Hooked

        wrap()
    arrive = sim._arrive

    def watch(spec: RequestSpec) -> None:
        rid = f"r{sim._n}"
        if spec.group.startswith("t") and not spec.session:
            t = spec.group
            if t not in first_key:
                h = xxhash64_chain(None, spec.prompt_ids[: edge_blocks * bs], bs, None)[-1]
                first_key[t], key[h] = h, t
                holders[t] = set()
        now = sim.clock.now
        b = bursts.see(spec, now)
        if b is not None and b[0] and now >= sim.cfg.warmup:
            t = spec.group
            out["bursts"] += 1
            if not b[1]:
                out["warm"] += 1
            elif t not in ever:
                out["never"] += 1
                lines.append(f"    {now:7.2f} {t} cold: never held before")
            else:
                out["evicted"] += 1
                lt, le, blame = last_loss.get(t, (0.0, -1, Counter()))
                out["blame"] += blame
                tot = sum(blame.values()) or 1
                mix = " ".join(f"{k} {v / tot:.0%}" for k, v in blame.most_common(4))
                ago = now - lt
                lines.append(
                    f"    {now:7.2f} {t} cold: last copy lost {ago:5.1f} s earlier at replica {le}: {mix}"
                )
        arrive(spec)
        cls[rid] = "session" if spec.session else ("burst" if spec.group.startswith("t") else "oneoff")

    sim._arrive = watch  # type: ignore[method-assign]
    row = sim.run().row
    advance(sim.cfg.warmup + sim.cfg.duration)
    span = sim.cfg.duration
    out["copies"] = {t: copy_time[t] / span for t in sorted(copy_time)}
    out["dup_made"] = sum(dup_made.values())
    out["p90"] = row["ttft_p90"]
    if listing:
        print("\n".join(lines))
    return out


def main() -> None:
    usage_or_exit(__doc__, 5)
    args = [a for a in sys.argv[1:] if a != "--list"]
    listing = "--list" in sys.argv
    fam, qps, first, last = FAMILIES[args[0]], float(args[1]), int(args[2]), int(args[3])
    for policy in args[4:]:
        tot = Counter()
        blame: Counter = Counter()
        copies: list[float] = []
        for seed in range(first, last + 1):
            r = run(fam, policy, qps, seed, listing)
            cp = sum(r["copies"].values()) / max(1, len(r["copies"]))
            copies.append(cp)
            for k in ("bursts", "warm", "never", "evicted", "dup_made"):
                tot[k] += r[k]
            blame += r["blame"]
            print(
                f"{policy} {fam.name}/{seed}: p90 {r['p90'] * 1000:.0f} ms; bursts {r['bursts']}: "
                f"warm {r['warm']}, "
                f"cold never-held {r['never']}, cold evicted {r['evicted']}; copies per prefix {cp:.2f}; "
                f"dup made {r['dup_made']}",
                flush=True,
            )
        btot = sum(blame.values()) or 1
        mix = ", ".join(f"{k} {blame[k] / btot:.0%}" for k in CLASSES if blame[k])
        print(
            f"{policy} sum {first}-{last}: bursts {tot['bursts']}: warm {tot['warm']}, "
            f"never-held {tot['never']}, "
            f"evicted {tot['evicted']}; mean copies per prefix {sum(copies) / len(copies):.2f}; dup made "
            f"{tot['dup_made']}; writes between release and loss of the evicted ones: {mix}"
        )


if __name__ == "__main__":
    main()
