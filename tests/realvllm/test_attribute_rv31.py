"""``scripts/realvllm/attribute.py`` (rv31): a pass pair's mean-TTFT difference split request by request
into vLLM queue, prefill (more tokens computed vs slower per token), the rest of vLLM's TTFT and the time
outside vLLM; the parts add up to the difference, and so do first / same-server / switched requests."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "attribute.py"


def _script() -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def _rec(
    server: int, hit: float, ttft_ms: float, prefill_ms: float, queue_ms: float = 0.0
) -> dict[str, float]:
    return {"send": 1.0, "c_first": 1.0 + ttft_ms / 1000, "server": server, "prompt_tokens": 2000.0,
            "hit_tokens": hit, "v_queue_ms": queue_ms, "v_prefill_ms": prefill_ms,
            "v_ttft_ms": queue_ms + prefill_ms + 2.0}  # fmt: skip


def test_fit_is_least_squares_and_flat_without_spread() -> None:
    at = _script()
    a, b = at.fit([(0.0, 1.0), (1000.0, 11.0), (2000.0, 21.0)])
    assert abs(a - 1.0) < 1e-9 and abs(b - 0.01) < 1e-12
    assert at.fit([(5.0, 2.0), (5.0, 4.0)]) == (3.0, 0.0)


def test_parts_add_up_to_the_mean_difference() -> None:
    at = _script()
    # kvgate hits where sglang-router misses (fewer tokens computed), but waits longer outside vLLM
    ka = [_rec(0, 0, 40, 20), _rec(1, 1792, 25, 6), _rec(1, 1792, 30, 7, queue_ms=1.5), _rec(0, 0, 45, 22)]
    sg = [_rec(1, 0, 35, 21), _rec(1, 0, 33, 20), _rec(1, 1792, 14, 5), _rec(1, 0, 36, 21)]
    del sg[3]["v_ttft_ms"]  # one request whose histogram count did not move by one
    res = at.split(list(zip(ka, sg, strict=True)))
    diff = sum(at.ttft(a) - at.ttft(b) for a, b in zip(ka, sg, strict=True)) / 4
    assert abs(res["diff"] - diff) < 1e-9
    assert abs(sum(res["parts"].values()) - diff) < 1e-9
    assert res["recorded"] == 3 and abs(res["parts"]["unrecorded"] - (45 - 36) / 4) < 1e-9
    assert abs(res["parts"]["queue"] - 1.5 / 4) < 1e-9
    assert res["parts"]["more tokens"] < 0  # kvgate computed fewer prefill tokens
    assert res["computed"] == ((2000 + 208 + 208 + 2000) / 4, (2000 + 2000 + 208 + 2000) / 4)
    assert abs(sum(res["by_move"].values()) - diff) < 1e-9
    assert res["same_pick"] == 2


def test_kvgates_own_steps_from_its_marks() -> None:
    at = _script()
    r = _rec(0, 0, 30, 20) | {"recv": 1.002, "sent": 1.004, "first": 1.029}
    st = at.kvgate_steps(r)
    assert {k: round(v, 6) for k, v in st.items()} == {
        "in": 2.0,
        "gateway": 2.0,
        "relay": 1.0,
        "vllm_front": 3.0,
    }
    assert at.kvgate_steps(_rec(0, 0, 30, 20)) == {}  # no marks: sglang-router, direct


def test_table_marks_kvgates_switches() -> None:
    at = _script()
    pairs = [(_rec(0, 0, 40, 20), _rec(1, 0, 35, 21)), (_rec(1, 0, 40, 20), _rec(1, 0, 35, 21))]
    rows = at.request_rows("x", pairs)
    assert "| 0 | 0 / 1 |" in rows[-2] and "| 1 | 1* / 1 |" in rows[-1]


def test_front_step_against_the_waits() -> None:
    at = _script()
    recs = [
        _rec(0, 0, 30, 20)
        | {
            "recv": 1.0005,
            "sent": 1.001,
            "first": 1.001 + (22 + w / 2) / 1000,
            "loop_wait_ms": w,
            "api_wait_ms": api,
        }
        for w, api in ((0.0, 5.0), (4.0, 1.0), (8.0, 3.0), (12.0, 2.0))
    ]
    line = at.front_waits(recs)
    assert "over 4 requests" in line and "event loop's wait for a core 1.00" in line
    assert "front = 0.00 + 0.50 x loop wait" in line
    assert "too few" in at.front_waits(recs[:2])
