"""Where ``scripts/realvllm/vs_sglang.py`` sends a pass's requests (and its warm-up): no vLLM needed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "vs_sglang.py"
URLS = ["http://s0", "http://s1"]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vs_sglang_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses and annotations look the module up)
    spec.loader.exec_module(mod)
    return mod


def test_per_tenant_baseline_sends_each_tenant_to_its_server_warmup_too() -> None:
    vs = _script()
    name = "direct, tenant t -> server t mod 2"
    prompts = vs.workload(4, 3, 50, seed=1)
    warm = vs.workload(4, 3, 50, seed=1001)[:8]  # other tenants, as --warmup sends
    for batch in (prompts, warm):
        for p in batch:
            assert vs.target(name, None, URLS, p, batch) == URLS[vs.tenant_of(p, batch) % 2]
    # The warm-up reaches both servers (it used to go to server 0 only), as its pass does.
    assert {vs.target(name, None, URLS, p, warm) for p in warm} == set(URLS)
    assert {vs.target(name, None, URLS, p, prompts) for p in prompts} == set(URLS)


def test_router_and_plain_direct_targets() -> None:
    vs = _script()
    p = vs.workload(2, 2, 50, seed=1)
    assert {vs.target("kvgate (default)", "http://router", URLS, x, p) for x in p} == {"http://router"}
    assert {vs.target("direct, to server 0", None, URLS, x, p) for x in p} == {URLS[0]}


def _pass(ttft_ms: float) -> dict[str, object]:
    recs = [
        {"server": 0, "prompt_tokens": 2000.0, "hit_tokens": h, "send": 0.0, "c_first": ttft_ms / 1000}
        for h in (0.0, 1792.0)
    ]
    return {"mean_ttft_ms": ttft_ms, "p90_ttft_ms": ttft_ms, "hit_rate": 0.5, "records": recs}


def test_a_pinned_kvgate_pass_pairs_with_the_sglang_pass_pinned_alike() -> None:
    vs = _script()
    kv, sg = "kvgate (default, --kv-events auto)", "sglang-router cache_aware"
    pin = ", router on CPU 1"
    results = {
        kv: [_pass(50.0), _pass(60.0)],
        sg: [_pass(100.0), _pass(100.0)],
        kv + pin: [_pass(40.0), _pass(30.0)],
        sg + pin: [_pass(20.0), _pass(60.0)],
    }
    out = vs.report(results)
    assert out[kv]["mean_ttft_ms"]["ratios"] == [0.5, 0.6]
    assert out[kv + pin]["mean_ttft_ms"]["ratios"] == [2.0, 0.5]
    assert vs.pin_suffix(kv + pin) == pin and vs.pin_suffix(kv) == ""


def test_router_names_take_a_cpu_pin() -> None:
    vs = _script()
    assert vs.split_pin("kvgate/cpu1") == ("kvgate", {1})
    assert vs.split_pin("sglang") == ("sglang", None)
