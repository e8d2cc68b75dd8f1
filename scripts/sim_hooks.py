"""Hooks the multi-turn diagnostic scripts share on a fleet-simulator run (review s14-mt's tidy list):
forcing the Director's pick (``luck_band.py``'s ``after`` move, ``rollout_oracle.py``,
``burst_oracles.py``), the per-seed table of a run replayed N ways (``luck_band.py``, ``tie_reseed.py``),
the tokens of a prompt the engines really cache (``session_moves.py``), and a
tenant's bursts with whether each found its prefix cold (``cold_bursts.py``, ``pick_divergence.py``)."""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from kvgate.bench.mixed import Family
from kvgate.bench.workloads import RequestSpec
from kvgate.sim.kvcache import xxhash64_chain


def force_pick(sim: Any, choose: Callable[[Any, Any], Any]) -> None:
    """Wrap ``sim.director.pick``: ``choose(request, result)`` sees each of the Director's results and
    returns the endpoint to send the request to instead (the result's endpoints become that one alone),
    or None to keep the result. The picker's own state still says its pick (the move is behind its back)."""
    pick = sim.director.pick

    def forced(req: Any, explain: bool = False) -> Any:
        res = pick(req, explain)
        to = choose(req, res)
        return res if to is None else dataclasses.replace(res, endpoints=[to])

    sim.director.pick = forced


def perturbation_table(
    fam: Family,
    qps: float,
    seeds: range,
    n: int,
    policies: Sequence[str],
    run: Callable[[str, int, int], float],
    word: str,
    head: str | None = None,
    over_1s: bool = False,
) -> None:
    """Print, per seed and policy, the plain p90 (``run(policy, seed, 0)``, s) and the ``n`` perturbed
    ones (``run(policy, seed, k)``, k = 1..n; ``word`` names them) with their median; then ``head`` and,
    per policy, the geometric means over seeds of the plain p90 and of each seed's median as ratios to
    ``policies[0]``'s (sglang's model), optionally how many plain runs passed 1 s, and the largest
    max/min over a seed's runs (geomean)."""
    plain: dict[str, list[float]] = {p: [] for p in policies}
    median: dict[str, list[float]] = {p: [] for p in policies}
    spread: dict[str, list[float]] = {p: [] for p in policies}
    for seed in seeds:
        for pol in policies:
            runs = [run(pol, seed, k) for k in range(n + 1)]
            plain[pol].append(runs[0])
            median[pol].append(statistics.median(runs))
            spread[pol].append(max(runs) / min(runs))
            print(
                f"{fam.name}/{seed} @ {qps:g} {os.path.basename(pol)}: p90 {runs[0] * 1000:.0f} ms, {word} "
                f"{' / '.join(f'{x * 1000:.0f}' for x in runs[1:])}, median {median[pol][-1] * 1000:.0f}",
                flush=True,
            )
    ref_plain, ref_med = plain[policies[0]], median[policies[0]]
    if head is not None:
        print(head)
    for pol in policies:

        def gm(xs: list[float], ref: list[float]) -> float:
            return statistics.geometric_mean(a / b for a, b in zip(xs, ref, strict=True))

        over = f"runs over 1 s {sum(x > 1.0 for x in plain[pol])} plain, " if over_1s else ""
        print(
            f"{os.path.basename(pol)}: plain gm {gm(plain[pol], ref_plain):.3f}, "
            f"median-of-{n + 1} gm {gm(median[pol], ref_med):.3f} vs sglang's model, {over}"
            f"largest max/min over a seed's runs {max(spread[pol]):.2f} "
            f"(geomean {statistics.geometric_mean(spread[pol]):.2f})"
        )


def cached_tokens(engines: Sequence[Any], ids: list[int]) -> list[int]:
    """Per engine, the tokens of the longest prefix of ``ids`` it caches: whole blocks, the prompt's last
    token left out (engine truth, not a picker's index)."""
    bs = engines[0].config.block_size
    n = (len(ids) - 1) // bs
    hashes = xxhash64_chain(None, ids[: n * bs], bs, None)
    return [len(e.pool.lookup(hashes, n)) * bs for e in engines]


class Bursts:
    """A mixed family's tenant bursts as their requests arrive (a request of a ``t...`` group with no
    session; a new burst when it comes over 1 s after its tenant's current burst began). A burst is cold
    when its first request found the tenant's prefix cached nowhere: every engine held less than the
    prefix less one block (engine truth)."""

    def __init__(self, sim: Any, fam: Family) -> None:
        self.engines = [r.engine for r in sim.replicas]
        self.edge = fam.tenant_prefix - self.engines[0].config.block_size
        self.current: dict[str, tuple[float, bool]] = {}  # tenant -> (first arrival, cold)

    def see(self, spec: RequestSpec, now: float) -> tuple[bool, bool] | None:
        """For a burst's request arriving at ``now``: whether it begins a new burst, and whether its burst
        is cold; None for any other request."""
        if not spec.group.startswith("t") or spec.session:
            return None
        b = self.current.get(spec.group)
        if b is None or now - b[0] > 1.0:
            cold = max(cached_tokens(self.engines, spec.prompt_ids)) < self.edge
            self.current[spec.group] = (now, cold)
            return True, cold
        return False, b[1]
