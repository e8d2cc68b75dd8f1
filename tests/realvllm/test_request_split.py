"""``scripts/realvllm/request_split.py``: the classes' contributions add up to the pass pair's difference."""

from __future__ import annotations

import random
import runpy
import statistics
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "request_split.py"


def _script() -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def _rec(rng: random.Random, hit: bool, with_server_side: bool) -> dict[str, float]:
    t = rng.uniform(0.02, 0.3)
    rec = {"send": 10.0, "c_first": 10.0 + t, "server": rng.choice((0, 1)), "prompt_tokens": 2000.0,
           "hit_tokens": 1920.0 if hit else 0.0}  # fmt: skip
    if with_server_side:
        rec |= {"v_ttft_ms": 1000 * t * 0.8, "v_queue_ms": 0.1, "v_prefill_ms": 1000 * t * 0.7}
    return rec


def test_contributions_add_up_to_the_difference_of_the_means() -> None:
    rs = _script()
    rng = random.Random(7)
    for with_side in (False, True):
        a = [_rec(rng, rng.random() < 0.7, with_side) for _ in range(40)]
        b = [_rec(rng, rng.random() < 0.4, with_side) for _ in range(40)]
        rows = rs.split(list(zip(a, b, strict=True)))
        assert sum(r["n"] for r in rows.values()) == 40
        diff = statistics.fmean(map(rs.ttft, a)) - statistics.fmean(map(rs.ttft, b))
        assert abs(sum(r["contribution"] for r in rows.values()) - diff) < 1e-9
        both = rows["both hit"]
        assert ("v_ttft_ms" in both and "outside" in both) == with_side
        if with_side:  # outside = client TTFT - vLLM's
            assert abs(both["outside"][0] - (both["ttft"][0] - both["v_ttft_ms"][0])) < 1e-9


def test_a_record_without_a_server_is_a_miss() -> None:
    rs = _script()
    unseen = {"send": 0.0, "c_first": 0.1, "server": -1, "prompt_tokens": 0.0, "hit_tokens": 0.0}
    hit = {"send": 0.0, "c_first": 0.05, "server": 1, "prompt_tokens": 2000.0, "hit_tokens": 1920.0}
    assert rs.classify(hit, unseen) == "kvgate hit only"
    assert rs.classify(unseen, hit) == "sglang hit only"
