"""The step-time model against the measured GPU step times, and the fitting procedure itself."""

from __future__ import annotations

import pytest

from kvgate.sim.profiles import (
    GPUS,
    MODELS,
    StepModel,
    causal_pairs,
    derive_slower_gpu,
    fit_model,
    get_profile,
    load_measurements,
    profile_names,
)

MEASURED = [f"{m}-{g}" for m in MODELS for g in ("h100", "h200")]


def _points(name: str) -> list[tuple[str, float, float]]:
    """(label, simulated GPU ms, measured ms) for every measured prefill and decode point."""
    model, gpu = name.rsplit("-", 1)
    data = load_measurements(gpu)[model]
    sm = get_profile(name).model
    out = [(f"prefill {k}", sm.prefill_ms(int(k)), float(v)) for k, v in data["prefill_ms"].items()]
    for k, v in data["decode_ms"].items():
        b, c = (int(x) for x in k.split("x"))
        out.append((f"decode {k}", sm.decode_ms(b, c), float(v)))
    for k, v in data["linear_ms"].items():
        out.append((f"linear {k}", sm.linear(int(k)), float(v)))
    return out


@pytest.mark.parametrize("name", MEASURED)
def test_fit_within_10_percent_of_every_measured_point(name: str) -> None:
    points = _points(name)
    assert len(points) >= 20
    worst = max(points, key=lambda p: abs(p[1] - p[2]) / p[2])
    assert abs(worst[1] - worst[2]) / worst[2] < 0.10, worst


def test_fit_recovers_a_known_model() -> None:
    # Measurements generated from known coefficients must come back out of the fit.
    truth = StepModel((1, 256, 4096), (5.0, 8.0, 100.0), 1.2e-6, 3e-4, 4e-5, 2e-3, 0.5, 3.5e-4)
    measured = {
        "linear_ms": {str(m): truth.linear(m) for m in (1, 256, 4096)},
        "prefill_ms": {str(t): truth.prefill_ms(t) for t in (128, 512, 2048, 8192, 16384)},
        "decode_ms": {
            f"{b}x{c}": truth.decode_ms(b, c) for b in (1, 8, 64, 256) for c in (256, 1024, 4096, 16384)
        },
    }
    fit = fit_model(measured)
    assert fit.prefill_ms_per_pair == pytest.approx(1.2e-6, rel=1e-6)
    assert fit.prefill_ms_per_token == pytest.approx(3e-4, rel=1e-6)
    assert fit.decode_ms_per_kv_token == pytest.approx(4e-5, rel=1e-6)
    assert fit.decode_ms_per_seq == pytest.approx(2e-3, rel=1e-6)
    assert fit.decode_seq_ms_base == pytest.approx(0.5, rel=1e-6)
    assert fit.decode_seq_ms_per_token == pytest.approx(3.5e-4, rel=1e-6)


def test_step_time_model_shape() -> None:
    m = get_profile("llama3-8b-h100").model
    # Linear part interpolates and extrapolates monotonically.
    assert m.linear(1) < m.linear(100) < m.linear(8192) < m.linear(16384)
    assert m.linear(16384) == pytest.approx(2 * m.linear(8192), rel=0.05)
    # Chunked prefill: a later chunk of the same prompt costs more than the first (attention to the past).
    later = m.gpu_ms(512, 512, causal_pairs(4096, 512), 0, 0, 0)
    assert later > m.gpu_ms(512, 512, causal_pairs(0, 512), 0, 0, 0)
    # Decode grows with batch and with context; a whole step adds vLLM's overhead.
    assert m.decode_ms(1, 1024) < m.decode_ms(64, 1024) < m.decode_ms(256, 1024)
    assert m.decode_ms(64, 1024) < m.decode_ms(64, 4096)
    assert m.step_s(8, 0, 0, 8, 8 * 1024, 1024) * 1000 == pytest.approx(m.decode_ms(8, 1024) + m.overhead_ms)
    assert m.gpu_ms(0, 0, 0, 0, 0, 0) == 0.0


def test_kv_read_cost_per_byte_is_consistent_across_models() -> None:
    # The bandwidth-bound decode cost is KV bytes / effective HBM bandwidth: on H200, where both models
    # have big-batch points at several contexts, the two independent fits agree. This backs the prior used
    # for Qwen3-32B on H100 (whose big batches were all measured at one context).
    per_byte = {
        m: get_profile(f"{m}-h200").model.decode_ms_per_kv_token / get_profile(f"{m}-h200").kv_bytes_per_token
        for m in MODELS
    }
    lo, hi = min(per_byte.values()), max(per_byte.values())
    assert hi / lo < 1.25
    # Effective bandwidth is physical: below the datasheet peak, above half of it.
    for gpu in ("h100", "h200"):
        p = get_profile(f"llama3-8b-{gpu}")
        eff_tbs = p.kv_bytes_per_token / (p.model.decode_ms_per_kv_token / 1000) / 1e12
        assert 0.5 * GPUS[gpu]["hbm_tbs"] < eff_tbs < GPUS[gpu]["hbm_tbs"]


def test_h200_decodes_faster_than_h100() -> None:
    for model in MODELS:
        h100, h200 = get_profile(f"{model}-h100").model, get_profile(f"{model}-h200").model
        assert h200.decode_ms(64, 1024) < h100.decode_ms(64, 1024)


def test_kv_capacity_defaults() -> None:
    p = get_profile("llama3-8b-h100")
    # Reference: 8B on one H100-80GB at 0.9 utilisation holds ~400-440k tokens (~25-27k blocks of 16).
    assert 25_000 <= p.num_gpu_blocks <= 27_500
    assert get_profile("llama3-8b-h200").num_gpu_blocks > 2 * p.num_gpu_blocks
    q = get_profile("qwen3-32b-h100")
    assert 0 < q.num_gpu_blocks < p.num_gpu_blocks // 10  # 61 GiB of weights leave little KV room
    assert get_profile("tiny").num_gpu_blocks == 128


def test_derived_a100_profile_sits_between_bandwidth_and_flops_ratios() -> None:
    h100, a100 = get_profile("llama3-8b-h100"), get_profile("llama3-8b-a100")
    assert a100 == derive_slower_gpu(h100, "a100")
    r_bw = GPUS["h100"]["hbm_tbs"] / GPUS["a100"]["hbm_tbs"]
    r_fl = GPUS["h100"]["bf16_tflops"] / GPUS["a100"]["bf16_tflops"]
    for tokens in (1, 64, 512, 4096):
        ratio = a100.model.linear(tokens) / h100.model.linear(tokens)
        assert r_bw * 0.99 <= ratio <= r_fl * 1.01
    # Small batches are bandwidth bound, big prefills compute bound.
    assert a100.model.linear(1) / h100.model.linear(1) == pytest.approx(r_bw, rel=0.02)
    assert a100.model.prefill_ms(8192) / h100.model.prefill_ms(8192) == pytest.approx(r_fl, rel=0.05)
    assert a100.num_gpu_blocks == pytest.approx(h100.num_gpu_blocks, rel=0.01)


def test_tiny_profile_is_fast() -> None:
    m = get_profile("tiny").model
    assert 0.5 < m.step_s(1, 0, 0, 1, 100, 100) * 1000 < 1.5
    assert m.step_s(256, 256, causal_pairs(0, 256), 0, 0, 0) * 1000 < 2.0


def test_profile_registry() -> None:
    names = profile_names()
    for n in [*MEASURED, "llama3-8b-a100", "tiny"]:
        assert n in names
    with pytest.raises(KeyError, match="unknown step-time profile"):
        get_profile("nope")
