"""The paired-comparison arithmetic of the real-vLLM benchmark (no vLLM needed: default suite)."""

from __future__ import annotations

import math

import pytest

from kvgate.realvllm.paired import (
    compare,
    defined_ratios,
    fit_miss_cost,
    hit_miss_split,
    paired_ratios,
    passes_from_json,
    passes_from_log,
    spread,
    spread_line,
)

# Lines as vs_sglang.py prints them (a pass line, its breakdown, the final means that must be skipped).
LOG = """\
prompt tokens: mean 1970; 40 requests; logs /tmp/x
direct, to server 0                hit 0.236  mean TTFT 76 ms  p90 122 ms  vLLM-side mean TTFT 69 ms  >=1 s: 0
    client send -> response head             mean     6.1 ms  p90     7.1 ms
kvgate (default, --kv-events auto) hit 0.656  mean TTFT 48 ms  p90 93 ms  vLLM-side mean TTFT 40 ms  >=1 s: 0
sglang-router cache_aware          hit 0.236  mean TTFT 60 ms  p90 100 ms  vLLM-side mean TTFT 55 ms  >=1 s: 0
sglang-router cache_aware          hit 0.236  mean TTFT 50 ms  p90 80 ms  vLLM-side mean TTFT 45 ms  >=1 s: 0
kvgate (default, --kv-events auto) hit 0.600  mean TTFT 55 ms  p90 90 ms  vLLM-side mean TTFT 41 ms  >=1 s: 0
mean of 2 passes:
kvgate (default, --kv-events auto) hit 0.628  mean TTFT 52 ms  p90 92 ms  vLLM-side 41 ms  = 2.66x
"""


def test_spread_is_geometric_and_counts_wins() -> None:
    s = spread([0.5, 2.0, 1.0])
    assert s.geomean == pytest.approx(1.0)
    assert (s.low, s.high, s.n, s.at_most_one) == (0.5, 2.0, 3, 2)
    with pytest.raises(ValueError):
        spread([])
    with pytest.raises(ValueError):
        spread([1.0, math.nan])


def test_paired_ratios_need_equal_passes() -> None:
    assert paired_ratios([10, 30], [20, 30]) == [0.5, 1.0]
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])


def test_fit_recovers_a_line_and_handles_no_spread() -> None:
    f = fit_miss_cost([0, 1000, 2000, 3000], [20, 45, 70, 95])
    assert f.base_ms == pytest.approx(20)
    assert f.per_token_ms == pytest.approx(0.025)
    assert f.at(500) == pytest.approx(32.5)
    flat = fit_miss_cost([100, 100], [10, 20])
    assert (flat.base_ms, flat.per_token_ms) == (15, 0)
    with pytest.raises(ValueError):
        fit_miss_cost([1], [1])


def test_log_pairs_each_kvgate_pass_with_the_sglang_pass_beside_it() -> None:
    passes = passes_from_log(LOG)
    assert [p.router.split()[0] for p in passes] == [
        "direct,",
        "kvgate",
        "sglang-router",
        "sglang-router",
        "kvgate",
    ]
    c = compare(passes)
    assert c.ttft_ratios == pytest.approx([48 / 60, 55 / 50])
    assert c.p90_ratios == pytest.approx([93 / 100, 90 / 80])
    assert c.hit_ratio == pytest.approx((0.656 + 0.600) / 2 / 0.236)
    assert c.ttft.at_most_one == 1


def test_json_and_log_give_the_same_figures() -> None:
    doc = {
        "passes": {
            "kvgate (default, --kv-events auto)": [
                {
                    "hit_rate": 0.656,
                    "mean_ttft_ms": 48,
                    "p90_ttft_ms": 93,
                    "server_ttft_ms": 40,
                    "records": [],
                },
                {
                    "hit_rate": 0.600,
                    "mean_ttft_ms": 55,
                    "p90_ttft_ms": 90,
                    "server_ttft_ms": 41,
                    "records": [],
                },
            ],
            "sglang-router cache_aware": [
                {"hit_rate": 0.236, "mean_ttft_ms": 60, "p90_ttft_ms": 100, "server_ttft_ms": 55},
                {"hit_rate": 0.236, "mean_ttft_ms": 50, "p90_ttft_ms": 80, "server_ttft_ms": 45},
            ],
        }
    }
    assert compare(passes_from_json(doc)) == compare(passes_from_log(LOG))


def test_ambiguous_router_prefix_is_an_error() -> None:
    passes = passes_from_log(
        LOG.replace("kvgate (default, --kv-events auto) hit 0.600", "kvgate-x hit 0.600")
    )
    with pytest.raises(ValueError, match="2 routers"):
        compare(passes)


def test_an_exact_router_name_wins_over_a_longer_name_it_prefixes() -> None:
    # A run of --routers kvgate@base,kvgate,sglang: one kvgate name prefixes the other.
    kv, base = "kvgate (default, --kv-events auto)", "kvgate (default, --kv-events auto), base tree"
    sg = "sglang-router cache_aware"
    order = ((base, 60), (kv, 45), (sg, 50), (sg, 40), (kv, 30), (base, 50))  # K@b K S | S K K@b
    log = "".join(
        f"{n} hit 0.600  mean TTFT {ms} ms  p90 90 ms  vLLM-side mean TTFT 40 ms\n" for n, ms in order
    )
    passes = passes_from_log(log)
    with pytest.raises(ValueError, match="2 routers"):
        compare(passes, "kvgate")
    assert compare(passes, kv, base).ttft_ratios == [45 / 60, 30 / 50]
    assert compare(passes, base).ttft_ratios == [60 / 50, 50 / 40]


def test_hit_miss_split_decomposes_the_mean() -> None:
    def rec(server: int, prompt: float, hit: float, ms: float) -> dict[str, float]:
        return {
            "server": server,
            "prompt_tokens": prompt,
            "hit_tokens": hit,
            "send": 1.0,
            "c_first": 1 + ms / 1000,
        }

    recs = [rec(0, 2000, 1792, 30), rec(1, 2000, 1792, 40), rec(0, 2000, 0, 90), rec(-1, 0, 0, 500)]
    s = hit_miss_split(recs)
    assert (s.hits, s.misses) == (2, 1)
    assert s.hit_ms == pytest.approx(35) and s.miss_ms == pytest.approx(90)
    assert s.hit_share * s.hit_ms + (1 - s.hit_share) * s.miss_ms == pytest.approx((30 + 40 + 90) / 3)
    empty = hit_miss_split([])
    assert math.isnan(empty.hit_share) and math.isnan(empty.hit_ms)


def test_undefined_pairs_are_left_out_with_a_note() -> None:
    # A pass with no misses (or no hits) has nan for that mean: spread() would raise on it.
    kept, left_out = defined_ratios([30.0, math.nan, 40.0], [60.0, 50.0, math.nan])
    assert (kept, left_out) == ([0.5], 2)
    assert spread_line(kept, left_out).startswith("geomean 0.50x, min 0.50x, max 0.50x (1 of 1 <= 1.00x)")
    assert "2 pair(s) left out" in spread_line(kept, left_out)
    assert spread_line(*defined_ratios([math.nan], [10.0])).startswith("no defined pair; 1 pair(s) left out")
    assert spread_line([2.0]) == str(spread([2.0]))


def _recs(*ttfts_and_hits: tuple[float, bool]) -> list[dict[str, float]]:
    return [
        {"server": 0, "prompt_tokens": 2000, "hit_tokens": 1792 * hit, "send": 0, "c_first": ms / 1000}
        for ms, hit in ttfts_and_hits
    ]


def test_a_difference_splits_into_placement_and_per_request_cost_exactly() -> None:
    from kvgate.realvllm.paired import split_difference

    # A: 3 hits of 40 ms, 1 miss of 100 ms (mean 55); B: 1 hit of 30 ms, 3 misses of 80 ms (mean 67.5).
    a = _recs((40, True), (40, True), (40, True), (100, False))
    b = _recs((30, True), (80, False), (80, False), (80, False))
    d = split_difference(a, b)
    assert d.total == pytest.approx(55 - 67.5)
    assert d.placement == pytest.approx((3 * 30 + 80) / 4 - 67.5)  # A's counts at B's prices
    assert d.hit_cost == pytest.approx(3 * 10 / 4)
    assert d.miss_cost == pytest.approx(1 * 20 / 4)
    assert d.placement + d.hit_cost + d.miss_cost == pytest.approx(d.total)
    # Unequal pass sizes still add up; B without hits leaves A's hits unpriced (nan), not a wrong 0.
    d2 = split_difference(a, _recs((80, False), (90, False)))
    assert math.isnan(d2.placement) and math.isnan(d2.hit_cost) and d2.miss_cost == pytest.approx(1 * 15 / 4)
    with pytest.raises(ValueError):
        split_difference([], b)
