"""How often the engines' reported cached tokens correct the prefix index in one fleet-simulator run.

    PYTHONPATH=src python scripts/cached_feedback_counts.py FAMILY QPS SEED DURATION TENANT_PREFIX|- POLICY

e.g. ``a 9.416 1 120 - docs/benchmarks/policies/kvgate-cached-feedback.yaml`` (tuning run a/1) or
``a 7.5 1 120 4096 ...`` (the 4,096-token tenant-prefix stand-in). Prints the run's p90 TTFT (s) and:
usage = usages the prefix scorer was given (at prefill), claim = picks where the index claimed >= 2 blocks
on the chosen endpoint, short = of those, the engine held at least two blocks fewer, half = less than half,
eligible = short and the block's last toucher had finished, forgets = corrections that dropped entries,
dropped = index entries dropped in all.
"""

from __future__ import annotations

import collections
import dataclasses
import sys

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim
from kvgate.scheduling.plugins import prefix_cache as pc
from kvgate.scheduling.prefix import CHARS_PER_TOKEN

calls: collections.Counter[str] = collections.Counter()
_orig = pc.PrefixCacheScorer.on_usage


def _counting(self, request, endpoint, usage, now):  # type: ignore[no-untyped-def]
    c = self._claims.get(request.request_id)
    calls["usage"] += 1
    if c is not None:
        calls["claim"] += 1
        n = len(c.seqs)
        if c.text_chars:
            j = (
                usage.cached_tokens
                * c.text_chars
                // (max(1, usage.prompt_tokens) * c.block_tokens * CHARS_PER_TOKEN)
            )
        else:
            j = usage.cached_tokens // c.block_tokens
        if j + 1 < n:
            calls["short"] += 1
            calls["eligible"] += bool(c.seqs[j])
        if 2 * j < n:
            calls["half"] += 1
    before = self.forgotten
    _orig(self, request, endpoint, usage, now)
    if self.forgotten > before:
        calls["forgets"] += 1
        calls["dropped"] += self.forgotten - before


def main() -> None:
    family, qps, seed, duration, prefix, policy = sys.argv[1:7]
    pc.PrefixCacheScorer.on_usage = _counting  # type: ignore[method-assign]
    fam = FAMILIES[family]
    if prefix != "-":
        fam = dataclasses.replace(fam, tenant_prefix=int(prefix))
    sim = mixed_sim(fam, policy, float(qps), int(seed), float(duration), 30.0)
    p90 = sim.run().row["ttft_p90"]
    keys = ("usage", "claim", "short", "half", "eligible", "forgets", "dropped")
    print(f"p90 {p90:.3f} s", " ".join(f"{k} {calls[k]}" for k in keys))


if __name__ == "__main__":
    main()
