"""report.seed_summary: a figure rests on every seed of its row or is withheld, and says on how many it
could be computed (review s15-v15 L1: a run that finished nothing used to vanish from the geomean)."""

from __future__ import annotations

import pytest

from kvgate.bench.report import seed_summary, seed_summary_table

REF = "sglang-cache-aware"


def _row(seed: int, policy: str, p90: float | None, hit: float | None = 0.3) -> dict[str, object]:
    return {
        "load_fraction": 0.8,
        "policy": policy,
        "seed": seed,
        "ttft_p50": None if p90 is None else p90 / 2,
        "ttft_p90": p90,
        "prefix_hit_rate": hit,
    }


def _of(rows: list[dict[str, object]], policy: str) -> dict[str, object]:
    return next(s for s in seed_summary(rows) if s["policy"] == policy)


def test_a_run_that_finished_nothing_withholds_the_figure_and_counts_the_seeds() -> None:
    # Policy "x" finishes nothing on seed 0 (p90 None: the worst outcome, which find_knee counts as past
    # the knee) and is a bit faster than the reference on seed 1. A geomean over seed 1 alone (0.9, the
    # old figure under "seeds 2") would make the failed seed look like a gain.
    rows = [_row(0, REF, 1.0), _row(0, "x", None), _row(1, REF, 1.0), _row(1, "x", 0.9)]
    x = _of(rows, "x")
    assert x["seeds"] == 2
    for fig in ("ttft_p50", "ttft_p90", f"ttft_p50_vs_{REF}", f"ttft_p90_vs_{REF}"):
        assert x[fig] is None and x[f"{fig}_seeds"] == 1, (fig, x)
    assert x["prefix_hit_rate"] == pytest.approx(0.3) and "prefix_hit_rate_seeds" not in x
    ref = _of(rows, REF)  # complete: the figures, and no count keys
    assert ref[f"ttft_p90_vs_{REF}"] == pytest.approx(1.0) and not any(k.endswith("_seeds") for k in ref)


def test_a_reference_missing_on_one_seed_withholds_the_ratio_only() -> None:
    # The reference did not run on seed 1 (two runs with different --policies merged): the ratio covers
    # one seed of two, the p90 geomean both.
    rows = [_row(0, REF, 1.0), _row(0, "x", 0.5), _row(1, "x", 2.0)]
    x = _of(rows, "x")
    assert x[f"ttft_p90_vs_{REF}"] is None and x[f"ttft_p90_vs_{REF}_seeds"] == 1
    assert x["ttft_p90"] == pytest.approx(1.0) and "ttft_p90_seeds" not in x  # geomean(0.5, 2.0)


def test_the_table_marks_an_incomplete_figure_with_its_seed_count() -> None:
    rows = [_row(0, REF, 1.0), _row(0, "x", None, hit=None), _row(1, REF, 1.0), _row(1, "x", 0.9)]
    md = seed_summary_table(seed_summary(rows))
    x_line = next(line for line in md.splitlines() if "| x |" in line)
    assert x_line == (
        "| 0.80 | x | 2 | - (1/2 seeds) | - (1/2 seeds) | - (1/2 seeds) | - (1/2 seeds) | - (1/2 seeds) |"
    )
    assert "| 0.80 | sglang-cache-aware | 2 | 500 | 1,000 | 1.000 | 1.000 | 0.300 |" in md


def test_a_seed_run_twice_is_an_error_not_counted_once() -> None:
    with pytest.raises(ValueError, match="occurs twice"):
        seed_summary([_row(1, REF, 1.0), _row(1, REF, 1.1)])
