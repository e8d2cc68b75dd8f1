"""``scripts/realvllm/contention_split.py`` (rv36): per request means of a pass (TTFT, outside vLLM,
prefill per 1k tokens computed, the router's and the servers' CPU, other work's CPU in the window) and the
pass pair's bound: the router's extra CPU in a window against the TTFT difference."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "contention_split.py"


def _script() -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))


def _rec(ttft_ms: float, hit: float, router_ms: float, machine: bool = True, kvgate: bool = True) -> dict:
    r = {"send": 1.0, "c_first": 1.0 + ttft_ms / 1000, "end": 1.0 + (ttft_ms + 10) / 1000, "server": 1,
         "prompt_tokens": 2000.0, "hit_tokens": hit, "v_prefill_ms": (2000 - hit) / 100,
         "v_ttft_ms": ttft_ms - 8,
         "router_run_ms": router_ms, "router_wait_ms": 9.0, "loop_run_ms": router_ms if kvgate else 0.0,
         "loop_wait_ms": 4.0, "api_run_ms": 3.0, "engine_run_ms": 20.0, "client_run_ms": 2.0,
         "server1_run_ms": 23.0, "server1_wait_ms": 5.0}  # fmt: skip
    if machine:
        r.update({"machine_busy_ms": 60.0, "machine_idle_ms": 40.0, "psi_some_ms": 7.0})
    return r


def test_request_means_of_a_pass() -> None:
    cs = _script()
    m = cs.request_means({"records": [_rec(40, 0, 2.0), _rec(20, 1920, 3.0)]})
    assert m["ttft"] == pytest.approx(30.0) and m["outside"] == pytest.approx(8.0)
    assert m["prefill_per_1k"] == pytest.approx(1000 * (20 + 0.8) / 2080)  # only tokens it computed
    assert m["router_run"] == pytest.approx(2.5) and m["loop_wait"] == 4.0
    # other work = machine busy - (router + API servers + engines + client) in the window
    assert m["others_cpu"] == pytest.approx(60 - (2.5 + 3 + 20 + 2)) and m["psi_some"] == 7.0
    assert m["window"] == pytest.approx(40.0)
    # sglang-router has no event loop of its own measured: its threads' wait; old runs: no machine fields
    s = cs.request_means({"records": [_rec(40, 0, 1.0, machine=False, kvgate=False)]})
    assert s["loop_wait"] == 9.0 and math.isnan(s["others_cpu"]) and math.isnan(s["psi_some"])


def test_the_table_pairs_pass_i_with_pass_i_and_bounds_the_routers_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cs = _script()
    ps = {"load_start": 5.0, "load_end": 6.0, "router_cpu_s": 0.1, "server_cpu_list": [1.0, 2.0],
          "others_cpu_s": 3.0, "machine_busy_s": 9.0}  # fmt: skip
    base_arm = "kvgate (default, --kv-events auto), base tree"
    doc = {"passes": {
        "kvgate (default, --kv-events auto)": [{**ps, "records": [_rec(50, 1920, 2.5)]}] * 2,
        base_arm: [{**ps, "records": [_rec(30, 1920, 2.5)]}] * 2,
        "sglang-router cache_aware": [{**ps, "records": [_rec(40, 0, 1.0, kvgate=False)]}] * 2}}  # fmt: skip
    f = tmp_path / "run.json"
    f.write_text(json.dumps(doc))
    monkeypatch.setattr(sys, "argv", ["contention_split.py", str(f)])
    assert cs.main() == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| run.json")]
    assert len(rows) == 2 and all(r.endswith("| +1.5 | +10.0 |") for r in rows), rows
    assert "2 of 2 pairs a lost" in out and "+1.5 / +10.0" in out
    # sglang-router's 40 ms over kvgate's 50: no pair lost, said so
    kv = "kvgate (default, --kv-events auto)"
    monkeypatch.setattr(sys, "argv", ["contention_split.py", str(f), "--a", "sglang", "--b", kv])
    assert cs.main() == 0
    out = capsys.readouterr().out
    assert "0 of 2 pairs a lost; there a's extra CPU" in out and out.rstrip().endswith("(none)")
    assert cs.arm(doc, "kvgate (default, --kv-events auto), base") == base_arm
    with pytest.raises(SystemExit):
        cs.arm(doc, "kvgate (default")  # two passes start so: ambiguous, refused
