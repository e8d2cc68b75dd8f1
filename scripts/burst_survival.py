"""Why a tenant's prefix survives until its next burst or not: for each measured burst of a mixed family,
the gap since its tenant's previous burst, whether it found the prefix cold (engine truth, as
``cold_bursts.py``), and the blocks written at the replica the previous burst's first request went to
(its holder) between the two bursts, by class.

    PYTHONPATH=src:scripts python scripts/burst_survival.py FAMILY QPS FIRST_SEED LAST_SEED POLICY...

A freed block in vLLM's LRU free queue survives until the blocks written at its replica after it was
freed use up the free blocks ahead of it, so a holder's writes between a tenant's bursts are what
evicts the tenant's prefix. Writes per request: its uncached prompt blocks at its first schedule, its
output blocks spread evenly from its first token to its end (a session turn's uncached prompt counts as
a new session's when it is at most ``NEW_SESSION_TOKENS``, else as a context computed again).

Prints per run the p90, the measured bursts and the cold ones (with their gaps); per policy, the cold
share by gap, the median time the prefix was still cached somewhere after the previous burst began
(for cold bursts), and, for bursts 15-45 s after their tenant's previous one, the mean blocks written
at the previous holder in between, by class, cold and warm apart.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from script_usage import usage_or_exit
from sim_hooks import Bursts, cached_tokens

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim
from kvgate.bench.workloads import RequestSpec

GAPS = ((0.0, 15.0), (15.0, 30.0), (30.0, 45.0), (45.0, 60.0), (60.0, float("inf")))
WINDOW = (15.0, 45.0)  # gaps whose holder writes are compared (where cold and warm bursts both occur)
# A session turn with at most this many uncached prompt tokens is a new session's first turn (family c's
# system prompt + first user turn: at most 1,200 tokens); more is a lost context computed again.
NEW_SESSION_TOKENS = 1250
KINDS = (
    "session new",
    "session context",
    "session output",
    "oneoff prompt",
    "oneoff output",
    "burst prompt",
    "burst output",
)


@dataclass(slots=True, frozen=True)
class Write:
    replica: int
    cls: str  # session / burst / oneoff
    scheduled: float  # first schedule (its uncached prompt blocks are written then)
    first: float  # first token
    end: float  # finish
    prompt_blocks: float  # uncached prompt tokens / block size
    output_blocks: float


def writes_between(writes: list[Write], replica: int, t0: float, t1: float, block: int) -> dict[str, float]:
    """Blocks written at ``replica`` in [t0, t1) by kind (``KINDS``): a prompt's at its first schedule,
    an output's pro rata over [first token, end]."""
    by: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    new_blocks = NEW_SESSION_TOKENS / block
    for w in writes:
        if w.replica != replica:
            continue
        if t0 <= w.scheduled < t1 and w.prompt_blocks:
            if w.cls == "session":
                by["session new" if w.prompt_blocks <= new_blocks else "session context"] += w.prompt_blocks
            else:
                by[f"{w.cls} prompt"] += w.prompt_blocks
        if w.output_blocks and w.end > w.first:
            overlap = min(w.end, t1) - max(w.first, t0)
            if overlap > 0:
                by[f"{w.cls} output"] += w.output_blocks * overlap / (w.end - w.first)
    return by


def mixed_class(spec: RequestSpec) -> str:
    return "session" if spec.session else ("burst" if spec.group.startswith("t") else "oneoff")


@dataclass(slots=True)
class BurstRow:
    at: float
    cold: bool
    gap: float  # since the tenant's previous burst began
    survived: float  # how long after the previous burst began the whole prefix was last cached anywhere
    prev_replica: int
    prev_at: float


def run(
    fam: Any, policy: str, qps: float, seed: int
) -> tuple[dict[str, Any], list[BurstRow], list[Write], int]:
    sim = mixed_sim(fam, policy, qps, seed)
    engines = [r.engine for r in sim.replicas]
    block = engines[0].config.block_size
    bursts = Bursts(sim, fam)
    kind: dict[str, str] = {}
    prefixes: dict[str, list[int]] = {}  # tenant -> its prefix's ids
    last_seen: dict[str, float] = {}  # tenant -> last arrival at which an engine held the whole prefix
    prev: dict[str, tuple[float, int]] = {}  # tenant -> (its current burst's start, its first replica)
    rows: list[BurstRow] = []
    writes: list[Write] = []
    arrive = sim._arrive

    def watch(spec: RequestSpec) -> None:
        now = sim.clock.now
        for g, ids in prefixes.items():
            if max(cached_tokens(engines, ids)) >= fam.tenant_prefix - block:
                last_seen[g] = now
        b = bursts.see(spec, now)
        rid = f"r{sim._n}"
        kind[rid] = mixed_class(spec)
        arrive(spec)
        if b is None or not b[0]:
            return
        g = spec.group
        prefixes.setdefault(g, spec.prompt_ids[: fam.tenant_prefix])
        live = sim._live.get(rid)
        replica = live.index if live is not None else -1
        p = prev.get(g)
        if p is not None and now >= sim.cfg.warmup:
            rows.append(BurstRow(now, b[1], now - p[0], last_seen.get(g, p[0]) - p[0], p[1], p[0]))
        prev[g] = (now, replica)

    sim._arrive = watch  # type: ignore[method-assign]
    for i, rep in enumerate(sim.replicas):  # they hold the callback they were built with
        finished = rep.on_finished

        def done(s: Any, t: float, finished: Any = finished, i: int = i) -> None:
            writes.append(
                Write(
                    i,
                    kind.get(s.request_id, "?"),
                    s.first_scheduled_time if s.first_scheduled_time is not None else t,
                    s.first_token_time if s.first_token_time is not None else t,
                    t,
                    (s.num_prompt_tokens - s.num_cached_tokens) / block,
                    len(s.output_token_ids) / block,
                )
            )
            finished(s, t)

        rep.on_finished = done
    row = sim.run().row
    return row, rows, writes, block


def main() -> None:
    usage_or_exit(__doc__, 5)
    fam, qps = FAMILIES[sys.argv[1]], float(sys.argv[2])
    seeds = range(int(sys.argv[3]), int(sys.argv[4]) + 1)
    policies = sys.argv[5:]
    gaps: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    survived: dict[str, list[float]] = defaultdict(list)
    window: dict[tuple[str, bool], list[dict[str, float]]] = defaultdict(list)
    for seed in seeds:
        for pol in policies:
            row, rows, writes, block = run(fam, pol, qps, seed)
            cold = [r for r in rows if r.cold]
            print(
                f"{pol} {fam.name}/{seed}: p90 {row['ttft_p90'] * 1000:.0f} ms, "
                f"hit {row['prefix_hit_rate']:.3f}; "
                f"measured bursts {len(rows)}, cold {len(cold)} (gaps "
                f"{' / '.join(f'{r.gap:.0f}' for r in cold) or '-'} s)",
                flush=True,
            )
            for r in rows:
                gaps[pol].append((r.gap, r.cold))
                if r.cold:
                    survived[pol].append(r.survived)
                if WINDOW[0] <= r.gap < WINDOW[1]:
                    window[pol, r.cold].append(writes_between(writes, r.prev_replica, r.prev_at, r.at, block))
    for pol in policies:
        g = gaps[pol]
        n_cold = sum(c for _, c in g)
        print(f"{pol}: {n_cold} of {len(g)} measured bursts cold")
        for lo, hi in GAPS:
            inside = [c for gap, c in g if lo <= gap < hi]
            print(f"  gap {lo:.0f}-{hi:.0f} s: cold {sum(inside)} of {len(inside)}")
        if survived[pol]:
            print(
                f"  cold bursts: the prefix was last cached {statistics.median(survived[pol]):.1f} s "
                "(median) after the previous burst began"
            )
        for is_cold in (True, False):
            ws = window[pol, is_cold]
            if not ws:
                continue
            mean = {k: statistics.fmean(w[k] for w in ws) for k in KINDS}
            total = sum(mean.values())
            print(
                f"  {'cold' if is_cold else 'warm'} bursts {WINDOW[0]:.0f}-{WINDOW[1]:.0f} s after the "
                f"previous ({len(ws)}): blocks written at the previous holder in between {total:.0f}: "
                + ", ".join(f"{k} {v:.0f}" for k, v in mean.items())
            )


if __name__ == "__main__":
    main()
