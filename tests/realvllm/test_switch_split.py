"""``scripts/realvllm/switch_split.py``: requests grouped by hit or miss and by whether their server is the
previous request's; a pass's first N and requests with an unknown server (or after one) left out."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "switch_split.py"


def _script() -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def _rec(server: int, hit: bool, ttft_ms: float) -> dict[str, float]:
    return {"send": 1.0, "c_first": 1.0 + ttft_ms / 1000, "server": server, "prompt_tokens": 2000.0,
            "hit_tokens": 1792.0 if hit else 0.0, "v_ttft_ms": ttft_ms - 5}  # fmt: skip


def test_groups_by_cache_state_and_switch() -> None:
    ss = _script()
    recs = [_rec(0, False, 30), _rec(0, True, 15), _rec(1, True, 20), _rec(1, False, 40),
            _rec(-1, False, 50), _rec(0, True, 16), _rec(1, True, 21)]  # fmt: skip
    got = list(ss.groups(recs, 0))
    keys = [k for k, _ in got]
    # request 0 has no previous request; 4 (unknown server) and 5 (after it) are left out
    assert keys == [("hit", "same"), ("hit", "switch"), ("miss", "same"), ("hit", "switch")]
    assert [round(v["ttft"], 6) for _, v in got] == [15.0, 20.0, 40.0, 21.0]
    assert [round(v["outside"], 6) for _, v in got] == [5.0] * 4
    assert [k for k, _ in ss.groups(recs, 3)] == [("miss", "same"), ("hit", "switch")]


def test_table_pools_every_pass_per_router() -> None:
    ss = _script()
    doc = {"passes": {"r": [{"records": [_rec(0, True, 10), _rec(1, True, 12)]},
                            {"records": [_rec(1, True, 10), _rec(0, True, 14)]}]}}  # fmt: skip
    by = ss.table([doc, doc], 0)
    assert list(by) == ["r"]
    assert {k: len(v) for k, v in by["r"].items()} == {("hit", "switch"): 4}


def test_served_and_other_server_waits_where_recorded() -> None:
    ss = _script()
    r = _rec(1, True, 20) | {"server0_wait_ms": 3.0, "server1_wait_ms": 9.0}
    v = ss.values(r)
    assert (v["served_wait_ms"], v["other_wait_ms"]) == (9.0, 3.0)
    assert "served_wait_ms" not in ss.values(_rec(1, True, 20))


def test_contributions_add_up_to_the_difference_of_the_means() -> None:
    ss = _script()
    ka = [_rec(0, False, 40), _rec(0, True, 15), _rec(1, True, 25), _rec(-1, True, 30), _rec(1, True, 12)]
    sg = [_rec(0, False, 30), _rec(0, False, 30), _rec(0, True, 15), _rec(0, True, 14), _rec(0, True, 13)]
    c = ss.contributions(ka, sg, 1)
    assert abs(c["first"] - 10 / 5) < 1e-9 and abs(c["same"] - (-15 / 5)) < 1e-9
    assert abs(c["switch"] - 10 / 5) < 1e-9 and abs(c["unknown"] - (16 - 1) / 5) < 1e-9
    diff = sum(ss.values(a)["ttft"] - ss.values(b)["ttft"] for a, b in zip(ka, sg, strict=True)) / 5
    assert abs(sum(c.values()) - diff) < 1e-9


def test_kvgates_upstream_time_beyond_vllms_and_the_served_servers_cpu() -> None:
    """kvgate's write upstream -> its read of the first chunk, less vLLM's own TTFT (the time kvgate's
    threads and the API server took around vLLM's), and the served server's CPU (session 26)."""
    ss = _script()
    r = _rec(1, True, 20) | {"sent": 1.001, "first": 1.017, "server0_wait_ms": 3.0, "server1_wait_ms": 9.0,
                             "server0_run_ms": 0.5, "server1_run_ms": 30.0}  # fmt: skip
    v = ss.values(r)
    assert round(v["upstream_extra"], 6) == 1.0 and v["served_run_ms"] == 30.0  # 16 ms - vLLM's 15
    assert "upstream_extra" not in ss.values(_rec(1, True, 20))  # (no router marks: sglang, direct)
