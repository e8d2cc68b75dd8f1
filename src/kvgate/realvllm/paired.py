"""Paired comparison of two routers over passes of the same request sequence (issue #16).

One pass of 40 requests on a shared 2-core machine moves by 5-10 ms from load alone, as much as the
difference between routers. So the comparison pairs each pass of router A with the pass of router B run
right next to it (ABAB order, same seed, same prompts) and reports the per-pair ratio with its spread
(geomean, min, max) rather than one ratio of means that hides the noise.

The per-request records also let a pass's mean TTFT be split into what placement decided (how many
prompt tokens missed the servers' prefix caches) and what it cost per request regardless of placement:
``fit_miss_cost`` fits ``TTFT = base + per_token * missed tokens`` by least squares, so two routers'
``base`` can be compared at equal missed tokens.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Spread:
    """Geometric mean, min and max of some ratios, and how many of them are <= 1."""

    geomean: float
    low: float
    high: float
    n: int
    at_most_one: int

    def __str__(self) -> str:
        return (
            f"geomean {self.geomean:.2f}x, min {self.low:.2f}x, max {self.high:.2f}x "
            f"({self.at_most_one} of {self.n} <= 1.00x)"
        )


def spread(ratios: Iterable[float]) -> Spread:
    rs = list(ratios)
    if not rs or any(r <= 0 or math.isnan(r) for r in rs):
        raise ValueError(f"ratios must be positive numbers: {rs}")
    return Spread(
        geomean=math.exp(statistics.fmean(math.log(r) for r in rs)),
        low=min(rs),
        high=max(rs),
        n=len(rs),
        at_most_one=sum(r <= 1.0 for r in rs),
    )


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i]: pass i of router A over pass i of router B (run next to each other)."""
    if len(a) != len(b):
        raise ValueError(f"unpaired passes: {len(a)} vs {len(b)}")
    return [x / y for x, y in zip(a, b, strict=True)]


def defined_ratios(a: Sequence[float], b: Sequence[float]) -> tuple[list[float], int]:
    """``paired_ratios`` without the pairs where either side is undefined (nan: e.g. a pass with no hits
    or no misses has no mean TTFT of a hit or a miss), and how many pairs were left out."""
    rs = paired_ratios(a, b)
    kept = [r for r in rs if not math.isnan(r)]
    return kept, len(rs) - len(kept)


def spread_line(ratios: Sequence[float], left_out: int = 0) -> str:
    """``spread``'s summary, noting the pairs left out; a note instead when no pair is defined."""
    note = f"; {left_out} pair(s) left out: a side undefined (no hits or no misses)" if left_out else ""
    if not ratios:
        return f"no defined pair{note}"
    return f"{spread(ratios)}{note}"


@dataclass(frozen=True, slots=True)
class MissFit:
    """``TTFT_ms = base_ms + per_token_ms * missed tokens``, fitted over a set of requests."""

    base_ms: float
    per_token_ms: float
    n: int

    def at(self, missed_tokens: float) -> float:
        return self.base_ms + self.per_token_ms * missed_tokens


def fit_miss_cost(missed_tokens: Sequence[float], ttft_ms: Sequence[float]) -> MissFit:
    """Least-squares line of TTFT over prompt tokens that missed the prefix cache."""
    if len(missed_tokens) != len(ttft_ms) or len(ttft_ms) < 2:
        raise ValueError("need at least two (missed tokens, TTFT) pairs of equal length")
    mx, my = statistics.fmean(missed_tokens), statistics.fmean(ttft_ms)
    sxx = sum((x - mx) ** 2 for x in missed_tokens)
    if sxx == 0:  # every request missed the same number of tokens: no slope to fit
        return MissFit(base_ms=my, per_token_ms=0.0, n=len(ttft_ms))
    slope = sum((x - mx) * (y - my) for x, y in zip(missed_tokens, ttft_ms, strict=True)) / sxx
    return MissFit(base_ms=my - slope * mx, per_token_ms=slope, n=len(ttft_ms))


@dataclass(frozen=True, slots=True)
class PassFigures:
    """One router's pass: what ``vs_sglang.py`` prints on its line (and writes to ``--json``)."""

    router: str
    hit_rate: float
    mean_ttft_ms: float
    p90_ttft_ms: float
    server_ttft_ms: float


_PASS_LINE = re.compile(
    r"^(?P<router>\S.*?)\s+hit (?P<hit>[\d.]+)\s+mean TTFT (?P<mean>[\d.]+) ms\s+p90 (?P<p90>[\d.]+) ms\s+"
    r"vLLM-side mean TTFT (?P<server>[\d.]+|nan) ms"
)


def passes_from_log(text: str) -> list[PassFigures]:
    """The per-pass lines of a ``vs_sglang.py`` log (runs made before ``--json`` existed), in order."""
    out = []
    for line in text.splitlines():
        m = _PASS_LINE.match(line)
        if m and not line.startswith("mean of"):
            out.append(
                PassFigures(
                    router=m["router"],
                    hit_rate=float(m["hit"]),
                    mean_ttft_ms=float(m["mean"]),
                    p90_ttft_ms=float(m["p90"]),
                    server_ttft_ms=float(m["server"]),
                )
            )
    return out


def passes_from_json(doc: dict[str, Any]) -> list[PassFigures]:
    """Per-pass figures of a ``vs_sglang.py --json`` file (router by router, passes in run order)."""
    return [
        PassFigures(
            router=router,
            hit_rate=p["hit_rate"],
            mean_ttft_ms=p["mean_ttft_ms"],
            p90_ttft_ms=p["p90_ttft_ms"],
            server_ttft_ms=p["server_ttft_ms"],
        )
        for router, ps in doc["passes"].items()
        for p in ps
    ]


def by_router(passes: Sequence[PassFigures], prefix: str) -> list[PassFigures]:
    """The passes of the one router named ``prefix``, else of the one whose name starts with it, in order
    (a run of ``kvgate@base,kvgate`` has "kvgate (...)" and "kvgate (...), base tree": the exact name
    picks the first)."""
    names = {p.router for p in passes if p.router == prefix} or {
        p.router for p in passes if p.router.startswith(prefix)
    }
    if len(names) != 1:
        raise ValueError(f"{len(names)} routers start with {prefix!r}: {sorted(names)}")
    return [p for p in passes if p.router in names]


@dataclass(frozen=True, slots=True)
class RunComparison:
    """Router A against router B over one run's paired passes."""

    hit_ratio: float  # mean hit rate of A's passes over B's
    ttft_ratios: list[float]  # per pass: A's mean TTFT over B's
    p90_ratios: list[float]

    @property
    def ttft(self) -> Spread:
        return spread(self.ttft_ratios)


def compare(passes: Sequence[PassFigures], a: str = "kvgate", b: str = "sglang") -> RunComparison:
    pa, pb = by_router(passes, a), by_router(passes, b)
    return RunComparison(
        hit_ratio=statistics.fmean(p.hit_rate for p in pa) / statistics.fmean(p.hit_rate for p in pb),
        ttft_ratios=paired_ratios([p.mean_ttft_ms for p in pa], [p.mean_ttft_ms for p in pb]),
        p90_ratios=paired_ratios([p.p90_ttft_ms for p in pa], [p.p90_ttft_ms for p in pb]),
    )


@dataclass(frozen=True, slots=True)
class HitMissSplit:
    """A pass's mean TTFT as ``hit_share * hit_ms + (1 - hit_share) * miss_ms``: placement decides the
    share, the per-request cost (router, server load) the two means."""

    hits: int
    misses: int
    hit_ms: float  # mean TTFT of the requests whose prompt mostly hit the prefix cache (nan: none)
    miss_ms: float

    @property
    def hit_share(self) -> float:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else math.nan


def hit_miss_split(records: Sequence[dict[str, float]]) -> HitMissSplit:
    """Split placed records (``server`` >= 0) into mostly-hit (hit tokens >= half the prompt) and the
    rest; TTFT from the client's ``send`` and ``c_first`` marks (seconds)."""
    hit: list[float] = []
    miss: list[float] = []
    for r in records:
        if r["server"] < 0:
            continue
        ms = 1000 * (r["c_first"] - r["send"])
        (hit if r["hit_tokens"] >= 0.5 * r["prompt_tokens"] else miss).append(ms)
    return HitMissSplit(
        hits=len(hit),
        misses=len(miss),
        hit_ms=statistics.fmean(hit) if hit else math.nan,
        miss_ms=statistics.fmean(miss) if miss else math.nan,
    )


@dataclass(frozen=True, slots=True)
class Difference:
    """A's mean TTFT minus B's (placed requests, ms) in three parts that add up to it exactly:
    ``placement`` (A's hit/miss counts at B's mean TTFT of a hit and of a miss, minus B's mean: what
    A's routing gained or lost), ``hit_cost`` and ``miss_cost`` (A's share of hits / misses times how
    much longer each took behind A than behind B: the per-request cost). nan where B had no hits or no
    misses while A had some (no per-kind mean to price them at)."""

    total: float
    placement: float
    hit_cost: float
    miss_cost: float


def split_difference(a: Sequence[dict[str, float]], b: Sequence[dict[str, float]]) -> Difference:
    """``Difference`` of two passes' records (hit: at least half the prompt cached, as
    ``hit_miss_split``)."""
    sa, sb = hit_miss_split(a), hit_miss_split(b)
    na, nb = sa.hits + sa.misses, sb.hits + sb.misses
    if not na or not nb:
        raise ValueError("a pass without placed requests")

    def share(count: int, n: int, ms: float) -> float:  # (no requests of a kind: 0, not 0 x nan)
        return count * ms / n if count else 0.0

    mean_b = share(sb.hits, nb, sb.hit_ms) + share(sb.misses, nb, sb.miss_ms)
    at_b_prices = share(sa.hits, na, sb.hit_ms) + share(sa.misses, na, sb.miss_ms)
    hit_cost = share(sa.hits, na, sa.hit_ms - sb.hit_ms)
    miss_cost = share(sa.misses, na, sa.miss_ms - sb.miss_ms)
    mean_a = share(sa.hits, na, sa.hit_ms) + share(sa.misses, na, sa.miss_ms)
    return Difference(
        total=mean_a - mean_b, placement=at_b_prices - mean_b, hit_cost=hit_cost, miss_cost=miss_cost
    )
