"""Summaries, JSON results, markdown tables and PNG plots for benchmark runs.

One ``Collector`` per run (policy x load point) takes per-request figures and per-replica load
samples and reduces them to the row every report shows: TTFT / ITL / E2E p50, p90, p99, output
tokens/s, goodput under a TTFT SLO, prefix-cache hit rate (from the replicas' own counters, given
by the caller), load imbalance over time and errors. Memory is bounded: ITL gaps go to a fixed-size
reservoir, load samples are thinned to a fixed number of points.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ITL_RESERVOIR = 200_000
LOAD_POINTS = 400  # per-replica load samples kept for the over-time plot


def pct(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(slots=True)
class LoadSeries:
    """Per-replica (queue, kv use) samples over time; reduced to a coefficient of variation."""

    times: list[float] = field(default_factory=list)
    queue: list[list[float]] = field(default_factory=list)  # [sample][replica]
    kv: list[list[float]] = field(default_factory=list)
    _cv_queue: list[float] = field(default_factory=list)
    _cv_kv: list[float] = field(default_factory=list)
    _stride: int = 1
    _n: int = 0

    def add(self, t: float, queue: Sequence[float], kv: Sequence[float]) -> None:
        self._cv_queue.append(_cv(queue))
        self._cv_kv.append(_cv(kv))
        self._n += 1
        if self._n % self._stride:
            return
        self.times.append(t)
        self.queue.append(list(queue))
        self.kv.append(list(kv))
        if len(self.times) >= 2 * LOAD_POINTS:
            # Halve the resolution, keep every other point: bounded, still spans the whole run.
            self.times, self.queue, self.kv = self.times[::2], self.queue[::2], self.kv[::2]
            self._stride *= 2
        if len(self._cv_queue) >= 2 * ITL_RESERVOIR:
            self._cv_queue, self._cv_kv = self._cv_queue[::2], self._cv_kv[::2]

    def summary(self) -> dict[str, float | None]:
        return {
            "queue_cv_mean": _mean(self._cv_queue),
            "kv_cv_mean": _mean(self._cv_kv),
        }


def _cv(xs: Sequence[float]) -> float:
    """Coefficient of variation across replicas (0 = perfectly even); 0 when the fleet is idle."""
    a = np.asarray(xs, dtype=np.float64)
    m = float(a.mean()) if a.size else 0.0
    return float(a.std() / m) if m > 1e-9 else 0.0


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


@dataclass(slots=True)
class Collector:
    """Per-run accumulator. ``slo_ttft`` in the run's own time unit (scaled for time-scaled runs)."""

    slo_ttft: float = 2.0
    seed: int = 0
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    end_times: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    load: LoadSeries = field(default_factory=LoadSeries)
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    good: int = 0
    first_start: float | None = None
    last_end: float = 0.0
    _itl_seen: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(
        self,
        *,
        start: float,
        ok: bool,
        ttft: float | None,
        e2e: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        itl: Iterable[float] = (),
        error: str | None = None,
        cached_tokens: int | None = None,
    ) -> None:
        self.first_start = start if self.first_start is None else min(self.first_start, start)
        if not ok or ttft is None or e2e is None:
            self.errors += 1
            kind = (error or "error").split(":")[0][:60]
            if len(self.error_kinds) < 32 or kind in self.error_kinds:
                self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
            return
        self.ok += 1
        self.ttft.append(ttft)
        self.e2e.append(e2e)
        self.last_end = max(self.last_end, start + e2e)
        self.end_times.append(start + e2e)
        self.input_tokens += prompt_tokens
        self.output_tokens += completion_tokens
        self.cached_tokens += cached_tokens or 0
        if ttft < self.slo_ttft:
            self.good += 1
        if completion_tokens >= 2:
            self.tpot.append((e2e - ttft) / (completion_tokens - 1))
        for gap in itl:
            self.add_itl(gap)

    def add_itl(self, gap: float) -> None:
        # Reservoir sampling: uniform over all gaps, fixed memory.
        self._itl_seen += 1
        if len(self.itl) < ITL_RESERVOIR:
            self.itl.append(gap)
        else:
            j = self._rng.randrange(self._itl_seen)
            if j < ITL_RESERVOIR:
                self.itl[j] = gap

    def summary(
        self,
        *,
        duration: float | None = None,
        hit_rate: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The row: latencies in seconds, rates per second of the run's own clock."""
        span = duration
        if span is None:
            span = max(1e-9, self.last_end - (self.first_start or 0.0))
        total = self.ok + self.errors
        row: dict[str, Any] = {
            "requests": total,
            "ok": self.ok,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "duration_s": span,
            "req_per_s": self.ok / span,
            "output_tok_per_s": self.output_tokens / span,
            "input_tok_per_s": self.input_tokens / span,
            "goodput_share": (self.good / total) if total else None,
            "goodput_req_per_s": self.good / span,
            "slo_ttft_s": self.slo_ttft,
            "prefix_hit_rate": hit_rate,
        }
        for name, values in (("ttft", self.ttft), ("itl", self.itl), ("e2e", self.e2e)):
            for q in (50, 90, 99):
                row[f"{name}_p{q}"] = pct(values, q)
        row["tpot_p50"] = pct(self.tpot, 50)
        row["tpot_p90"] = pct(self.tpot, 90)
        row.update(self.load.summary())
        if extra:
            row.update(extra)
        return row


# ---- capacity ---

KNEE_FACTOR = 2.0  # knee: p90 TTFT within this factor of the unloaded p90


def find_knee(
    points: Sequence[tuple[float, float | None]], unloaded_p90: float, factor: float = KNEE_FACTOR
) -> float:
    """The highest load whose p90 TTFT is within ``factor`` x the unloaded p90, scanning upwards and
    stopping at the first load past it (a later lucky point does not count); 0 if even the lowest fails.

    ``points``: (load, p90 TTFT or None when nothing finished)."""
    knee = 0.0
    for load, p90 in sorted(points):
        if p90 is None or p90 > factor * unloaded_p90:
            break
        knee = load
    return knee


# ---- files -------------------------------------------------------------------------------------


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v * scale:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


# Columns of the standard table: (header, key, scale, digits).
COLUMNS: list[tuple[str, str, float, int]] = [
    ("TTFT p50 ms", "ttft_p50", 1000.0, 0),
    ("TTFT p90 ms", "ttft_p90", 1000.0, 0),
    ("TTFT p99 ms", "ttft_p99", 1000.0, 0),
    ("ITL p50 ms", "itl_p50", 1000.0, 1),
    ("ITL p90 ms", "itl_p90", 1000.0, 1),
    ("E2E p90 s", "e2e_p90", 1.0, 2),
    ("out tok/s", "output_tok_per_s", 1.0, 0),
    ("goodput", "goodput_share", 100.0, 1),
    ("hit rate %", "prefix_hit_rate", 100.0, 1),
    ("queue CV", "queue_cv_mean", 1.0, 2),
    ("KV CV", "kv_cv_mean", 1.0, 2),
    ("errors", "errors", 1.0, 0),
]


def markdown_table(rows: Sequence[dict[str, Any]], lead: Sequence[tuple[str, str]]) -> str:
    """A markdown table: ``lead`` = leading (header, key) columns (policy, QPS...), then COLUMNS."""
    heads = [h for h, _ in lead] + [c[0] for c in COLUMNS]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [_fmt(r.get(k)) for _, k in lead]
        cells += [_fmt(r.get(key), scale, digits) for _, key, scale, digits in COLUMNS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def seed_summary(rows: Sequence[dict[str, Any]], ref: str = "sglang-cache-aware") -> list[dict[str, Any]]:
    """Per (load fraction, policy) over the seeds of ``rows``: geometric means of p50 / p90 TTFT (s) and of
    their ratios to ``ref``'s on the same seed and load, the mean hit rate and the seeds counted.

    A figure rests on every seed of its row or is not given: when a seed lacks it (a run that finished
    nothing has no p50/p90, which is the worst outcome, not a neutral one; ``ref`` was not run on that
    seed or finished nothing there), the figure is None and ``<figure>_seeds`` says on how many of the
    row's ``seeds`` it could be computed (the key is there only for such an incomplete figure). A mean
    over the other seeds would make a policy that failed on one seed look better. A (load, policy,
    seed) that occurs twice is an error (a seed run twice would count once)."""
    runs: dict[tuple[Any, str, int], dict[str, Any]] = {}
    for r in rows:
        run = (r["load_fraction"], r["policy"], r["seed"])
        if run in runs:
            raise ValueError(f"seed_summary: load {run[0]}, policy {run[1]}, seed {run[2]} occurs twice")
        runs[run] = r
    out: list[dict[str, Any]] = []
    for load, pol in dict.fromkeys((r["load_fraction"], r["policy"]) for r in rows):
        mine = [r for (lf, p, _), r in runs.items() if lf == load and p == pol]
        item: dict[str, Any] = {"load_fraction": load, "policy": pol, "seeds": len(mine)}
        for key in ("ttft_p50", "ttft_p90"):
            vals = [r[key] for r in mine if r.get(key)]
            _over_every_seed(item, key, vals, statistics.geometric_mean)
            ratios = [
                r[key] / base[key]
                for r in mine
                if r.get(key) and (base := runs.get((load, ref, r["seed"]))) and base.get(key)
            ]
            _over_every_seed(item, f"{key}_vs_{ref}", ratios, statistics.geometric_mean)
        hits = [r["prefix_hit_rate"] for r in mine if r.get("prefix_hit_rate") is not None]
        _over_every_seed(item, "prefix_hit_rate", hits, statistics.fmean)
        out.append(item)
    return out


def _over_every_seed(item: dict[str, Any], name: str, vals: list[float], mean: Any) -> None:
    """``item[name]`` = ``mean(vals)`` when every one of ``item["seeds"]`` has a value, else None and
    ``item[name + "_seeds"]`` = how many do."""
    complete = len(vals) == item["seeds"]
    item[name] = mean(vals) if complete else None
    if not complete:
        item[f"{name}_seeds"] = len(vals)


def seed_summary_table(summary: Sequence[dict[str, Any]], ref: str = "sglang-cache-aware") -> str:
    """``seed_summary`` as markdown (TTFT in ms, geometric means over the seeds). A figure missing on some
    of the row's seeds reads ``- (k/n seeds)``: k seeds had it, n ran."""

    def cell(s: dict[str, Any], name: str, scale: float, digits: int) -> str:
        if f"{name}_seeds" in s:
            return f"- ({s[f'{name}_seeds']}/{s['seeds']} seeds)"
        return _fmt(s[name], scale, digits)

    out = [
        f"| load | policy | seeds | p50 TTFT ms | p90 TTFT ms | p50 vs {ref} | p90 vs {ref} "
        "| mean hit rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        out.append(
            f"| {_fmt(s['load_fraction'])} | {s['policy']} | {s['seeds']} | {cell(s, 'ttft_p50', 1000, 0)} "
            f"| {cell(s, 'ttft_p90', 1000, 0)} | {cell(s, f'ttft_p50_vs_{ref}', 1, 3)} "
            f"| {cell(s, f'ttft_p90_vs_{ref}', 1, 3)} | {cell(s, 'prefix_hit_rate', 1, 3)} |"
        )
    return "\n".join(out)


def plot_ttft_vs_qps(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """TTFT p50 (dashed) and p90 (solid) against offered QPS, one colour per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for i, pol in enumerate(policies):
        pts = sorted((r for r in rows if r["policy"] == pol), key=lambda r: r["qps"])
        xs = [r["qps"] for r in pts]
        color = f"C{i % 10}"
        ax.plot(xs, [(r["ttft_p90"] or 0.0) for r in pts], "-o", color=color, ms=3, label=f"{pol} p90")
        ax.plot(xs, [(r["ttft_p50"] or 0.0) for r in pts], "--", color=color, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("offered load (QPS)")
    ax.set_ylabel("TTFT (s)  solid p90, dashed p50")
    ax.set_title(title, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_load(path: Path, series: dict[str, LoadSeries], title: str) -> None:
    """Per-replica waiting queue over time, one panel per policy (shows hot-spotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(series))
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 1.9 * n + 0.6), dpi=110, sharex=True, squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], series.items(), strict=False):
        if s.times:
            q = np.asarray(s.queue, dtype=np.float64)
            for j in range(q.shape[1]):
                ax.plot(s.times, q[:, j], lw=0.7)
        ax.set_ylabel("queue", fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
