"""Step-time profiles: how long one engine step takes on a given model and GPU, and the KV capacity.

The model (fitted to step times measured on real H100/H200 GPUs, ``step_times_h1x0.json`` beside this file,
a copy of ``gpu-step-times/`` from the project's reference data):

    step_ms = overhead
            + linear(M)                                  # GEMMs/norms/LM head for the M tokens of the step
            + a_pf * sum(prefill causal pairs)           # chunk of L tokens after s cached: L*s + L*(L+1)/2
            + c_pf * prefill tokens                      # small fitted per-token correction
            + max(a_kv * sum(decode contexts) + d * B,   # B decodes bound by HBM bandwidth reading KV...
                  b0 + b * max(decode context))          # ...or by one long sequence's attention latency

``linear`` is a piecewise-linear interpolation of the measured ``linear_ms`` table (extrapolated with the
last segment's slope). ``a_pf``, ``c_pf`` are a least-squares fit of the prefill residuals, ``a_kv``, ``d``,
``b0``, ``b`` of the decode residuals (relative error), see :func:`fit_model`.
The measured steps have no scheduler, sampling or paging, so a vLLM step adds ``overhead`` (0.5 ms: the
H100 decode step for 8 x 1k context is 7.0 ms in the measurements against a 7.5 ms median TPOT that vLLM
shows for Llama-3-8B with 10 concurrent requests).
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Any

import orjson

GIB = 1 << 30
VLLM_STEP_OVERHEAD_MS = 0.5


@dataclass(frozen=True, slots=True)
class StepModel:
    """The fitted step-time terms (milliseconds)."""

    linear_tokens: tuple[int, ...]
    linear_ms: tuple[float, ...]
    prefill_ms_per_pair: float  # causal attention per (query, key) pair of a prefill chunk
    prefill_ms_per_token: float  # a prefill token's cost beyond ``linear`` (fitted, may be slightly < 0)
    decode_ms_per_kv_token: float  # bandwidth branch: every KV token the decodes read...
    decode_ms_per_seq: float  # ...plus a per-sequence cost
    decode_seq_ms_base: float  # latency branch: the longest decode's attention, base...
    decode_seq_ms_per_token: float  # ...plus per context token
    overhead_ms: float = VLLM_STEP_OVERHEAD_MS

    def linear(self, tokens: int) -> float:
        xs, ys = self.linear_tokens, self.linear_ms
        if tokens <= xs[0]:
            return ys[0]
        i = bisect_right(xs, tokens) - 1
        if i >= len(xs) - 1:
            i = len(xs) - 2  # extrapolate with the last segment
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)

    def decode_attention(self, decodes: int, sum_ctx: int, max_ctx: int) -> float:
        if decodes <= 0:
            return 0.0
        bw = self.decode_ms_per_kv_token * sum_ctx + self.decode_ms_per_seq * decodes
        lat = self.decode_seq_ms_base + self.decode_seq_ms_per_token * max_ctx
        return bw if bw > lat else lat

    def gpu_ms(
        self,
        tokens: int,
        prefill_tokens: int,
        prefill_pairs: int,
        decodes: int,
        decode_sum_ctx: int,
        decode_max_ctx: int,
    ) -> float:
        """The GPU part of a step, comparable to the measured points (no vLLM overhead).

        ``tokens``: all tokens of the step (prefill chunks + decodes); ``prefill_pairs``: the chunks' causal
        (query, key) pairs (:func:`causal_pairs`); ``decode_*_ctx``: the ``decodes``' context lengths.
        """
        if tokens <= 0:
            return 0.0
        return (
            self.linear(tokens)
            + self.prefill_ms_per_pair * prefill_pairs
            + self.prefill_ms_per_token * prefill_tokens
            + self.decode_attention(decodes, decode_sum_ctx, decode_max_ctx)
        )

    def step_s(
        self,
        tokens: int,
        prefill_tokens: int,
        prefill_pairs: int,
        decodes: int,
        decode_sum_ctx: int,
        decode_max_ctx: int,
    ) -> float:
        """A whole engine step in seconds, vLLM's per-step overhead included."""
        gpu = self.gpu_ms(tokens, prefill_tokens, prefill_pairs, decodes, decode_sum_ctx, decode_max_ctx)
        return (self.overhead_ms + gpu) / 1000.0

    def prefill_ms(self, prompt: int) -> float:
        """One whole ``prompt``-token prefill (what ``prefill_ms`` measured)."""
        return self.gpu_ms(prompt, prompt, causal_pairs(0, prompt), 0, 0, 0)

    def decode_ms(self, batch: int, ctx: int) -> float:
        """One decode step of ``batch`` sequences with ``ctx`` context each (what ``decode_ms`` measured)."""
        return self.gpu_ms(batch, 0, 0, batch, batch * ctx, ctx)


def causal_pairs(start: int, length: int) -> int:
    """(query, key) pairs of causal attention for ``length`` new tokens after ``start`` computed ones."""
    return length * start + length * (length + 1) // 2


@dataclass(frozen=True, slots=True)
class StepProfile:
    """A model on a GPU: its step-time model plus the capacity defaults vLLM would pick there."""

    name: str
    model: StepModel
    gpu: str
    gpu_mem_gib: float  # what the device reports as total memory
    weights_gib: float
    kv_bytes_per_token: int
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    vocab_size: int
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    # Activations of the profiling run, CUDA graphs and non-torch memory that vLLM keeps out of the KV cache.
    non_kv_reserve_gib: float = 4.0
    fixed_num_gpu_blocks: int = 0  # set: use it instead of the memory formula (the tiny test profile)
    derivation: str = "measured"

    @property
    def num_gpu_blocks(self) -> int:
        if self.fixed_num_gpu_blocks:
            return self.fixed_num_gpu_blocks
        kv_gib = self.gpu_mem_gib * self.gpu_memory_utilization - self.weights_gib - self.non_kv_reserve_gib
        return max(0, int(kv_gib * GIB // (self.kv_bytes_per_token * self.block_size)))


# ---------------------------------------------------------------------------------------------------------
# Fitting


def load_measurements(gpu: str) -> dict[str, Any]:
    """The measured step times for ``gpu`` ("h100" or "h200"), as shipped in the package."""
    raw = importlib.resources.files("kvgate.sim").joinpath(f"step_times_{gpu}.json").read_bytes()
    data: dict[str, Any] = orjson.loads(raw)
    return data


def _lstsq(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares through the normal equations (a handful of rows, 1-3 unknowns)."""
    n = len(rows[0])
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    aty = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(n)]
    # Gauss-Jordan with partial pivoting.
    m = [ata[i] + [aty[i]] for i in range(n)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        if abs(m[c][c]) < 1e-300:
            return [0.0] * n
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [a - f * b for a, b in zip(m[r], m[c], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def _parse_decode_key(key: str) -> tuple[int, int]:
    b, c = key.split("x")
    return int(b), int(c)


def fit_model(
    measured: dict[str, Any],
    overhead_ms: float = VLLM_STEP_OVERHEAD_MS,
    kv_ms_per_byte_prior: float | None = None,
) -> StepModel:
    """Fit the step-time model to one model's measurements on one GPU (minimising relative error).

    ``kv_ms_per_byte_prior``: the decode KV-read cost per byte from another model on the same GPU, used
    when this model's points cannot separate the per-KV-token from the per-sequence cost (all its
    bandwidth-bound points share one context length).
    """
    lin = sorted((int(k), float(v)) for k, v in measured["linear_ms"].items())
    base = StepModel(
        tuple(k for k, _ in lin), tuple(v for _, v in lin), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, overhead_ms
    )
    kv_bytes = float(measured.get("kv_bytes_per_token", 0))

    # Prefill: the residual over the linear part is causal attention (per pair) plus a per-token term.
    rows, ys = [], []
    for k, v in measured["prefill_ms"].items():
        t = int(k)
        rows.append([causal_pairs(0, t) / v, t / v])
        ys.append((v - base.linear(t)) / v)
    a_pf, c_pf = _lstsq(rows, ys)

    # Decode: the residual is max(bandwidth branch, latency branch). Alternate: assign each point to the
    # branch that explains it, refit both, until the assignment is stable.
    points = [(*_parse_decode_key(k), float(v)) for k, v in measured["decode_ms"].items()]
    resid = [(b, c, v, v - base.linear(b)) for b, c, v in points]
    in_bw = [b > 8 for b, _, _, _ in resid]  # start: few sequences are latency bound
    a_kv = d_seq = b0 = b1 = 0.0
    for _ in range(30):
        bw_pts = [p for p, f in zip(resid, in_bw, strict=True) if f]
        lat_pts = [p for p, f in zip(resid, in_bw, strict=True) if not f]
        if len({c for _, c, _, _ in bw_pts}) >= 2:
            a_kv, d_seq = _lstsq(
                [[b * c / v, b / v] for b, c, v, _ in bw_pts], [r / v for *_, v, r in bw_pts]
            )
        elif bw_pts and kv_ms_per_byte_prior is not None and kv_bytes:
            a_kv = kv_ms_per_byte_prior * kv_bytes
            d_seq = _lstsq(
                [[b / v] for b, _, v, _ in bw_pts], [(r - a_kv * b * c) / v for b, c, v, r in bw_pts]
            )[0]
        elif bw_pts:
            a_kv, d_seq = (
                _lstsq([[b * c / v] for b, c, v, _ in bw_pts], [r / v for *_, v, r in bw_pts])[0],
                0.0,
            )
        if len(lat_pts) >= 2:
            b0, b1 = _lstsq([[1 / v, c / v] for _, c, v, _ in lat_pts], [r / v for *_, v, r in lat_pts])
        new = [a_kv * b * c + d_seq * b > b0 + b1 * c for b, c, _, _ in resid]
        if new == in_bw:
            break
        in_bw = new
    return replace(
        base,
        prefill_ms_per_pair=max(0.0, a_pf),
        prefill_ms_per_token=c_pf,
        decode_ms_per_kv_token=max(0.0, a_kv),
        decode_ms_per_seq=max(0.0, d_seq),
        decode_seq_ms_base=max(0.0, b0),
        decode_seq_ms_per_token=max(0.0, b1),
    )


# ---------------------------------------------------------------------------------------------------------
# Named profiles

# GPU facts (device-reported memory; peak HBM bandwidth and dense BF16 FLOP/s from the datasheets).
GPUS: dict[str, dict[str, float]] = {
    "h100": {"mem_gib": 79.19, "hbm_tbs": 3.35, "bf16_tflops": 989.0},
    "h200": {"mem_gib": 139.8, "hbm_tbs": 4.8, "bf16_tflops": 989.0},
    "a100": {"mem_gib": 79.15, "hbm_tbs": 2.039, "bf16_tflops": 312.0},
}
# Model facts: BF16 weights, vLLM's default max_model_len (the model's context), vocabulary.
MODELS: dict[str, dict[str, float]] = {
    "llama3-8b": {"params_b": 8.03, "max_model_len": 131072, "vocab": 128256},
    "qwen3-32b": {"params_b": 32.8, "max_model_len": 40960, "vocab": 151936},
}


def _measured_profile(model: str, gpu: str, kv_ms_per_byte_prior: float | None = None) -> StepProfile:
    measured = load_measurements(gpu)[model]
    m, g = MODELS[model], GPUS[gpu]
    return StepProfile(
        name=f"{model}-{gpu}",
        model=fit_model(measured, kv_ms_per_byte_prior=kv_ms_per_byte_prior),
        gpu=gpu,
        gpu_mem_gib=g["mem_gib"],
        weights_gib=m["params_b"] * 1e9 * 2 / GIB,
        kv_bytes_per_token=int(measured["kv_bytes_per_token"]),
        # vLLM's defaults on >= 70 GiB GPUs other than A100.
        max_num_batched_tokens=8192,
        max_num_seqs=1024,
        max_model_len=int(m["max_model_len"]),
        vocab_size=int(m["vocab"]),
    )


def derive_slower_gpu(src: StepProfile, gpu: str) -> StepProfile:
    """Scale a measured profile to a GPU with less bandwidth and FLOP/s (assumes the same achieved fraction
    of peak on both GPUs).

    Each ``linear`` point is split into a compute-bound fraction ``f = min(1, c*M / linear(M))``, with ``c``
    the per-token slope of the largest measured segment (fully compute bound), and scaled by
    ``(1 - f) * bw_ratio + f * flops_ratio``. Prefill attention scales with FLOP/s, decode attention (KV
    reads) with bandwidth. The per-step CPU overhead stays.
    """
    s, d = GPUS[src.gpu], GPUS[gpu]
    r_bw = s["hbm_tbs"] / d["hbm_tbs"]
    r_fl = s["bf16_tflops"] / d["bf16_tflops"]
    sm = src.model
    xs, ys = sm.linear_tokens, sm.linear_ms
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    scaled = []
    for x, y in zip(xs, ys, strict=True):
        f = min(1.0, slope * x / y)
        scaled.append(y * ((1 - f) * r_bw + f * r_fl))
    model = replace(
        sm,
        linear_ms=tuple(scaled),
        prefill_ms_per_pair=sm.prefill_ms_per_pair * r_fl,
        prefill_ms_per_token=sm.prefill_ms_per_token * r_fl,
        decode_ms_per_kv_token=sm.decode_ms_per_kv_token * r_bw,
        decode_ms_per_seq=sm.decode_ms_per_seq * r_bw,
        decode_seq_ms_base=sm.decode_seq_ms_base * r_bw,
        decode_seq_ms_per_token=sm.decode_seq_ms_per_token * r_bw,
    )
    return replace(
        src,
        name=src.name.rsplit("-", 1)[0] + f"-{gpu}",
        model=model,
        gpu=gpu,
        gpu_mem_gib=d["mem_gib"],
        # vLLM picks the smaller defaults on A100 and on GPUs under 70 GiB.
        max_num_batched_tokens=2048,
        max_num_seqs=256,
        derivation=f"derived from {src.name}: bandwidth x{1 / r_bw:.3f}, FLOP/s x{1 / r_fl:.3f}",
    )


def _tiny() -> StepProfile:
    # ~1 ms steps and a 2k-token KV cache, so tests can queue, chunk and exhaust it quickly.
    model = StepModel(
        linear_tokens=(1, 64, 512),
        linear_ms=(0.6, 0.7, 1.5),
        prefill_ms_per_pair=1e-6,
        prefill_ms_per_token=0.0,
        decode_ms_per_kv_token=1e-5,
        decode_ms_per_seq=0.0,
        decode_seq_ms_base=0.0,
        decode_seq_ms_per_token=1e-4,
        overhead_ms=0.2,
    )
    return StepProfile(
        name="tiny",
        model=model,
        gpu="none",
        gpu_mem_gib=0.0,
        weights_gib=0.0,
        kv_bytes_per_token=1024,
        max_num_batched_tokens=256,
        max_num_seqs=32,
        max_model_len=2048,
        vocab_size=1000,
        fixed_num_gpu_blocks=128,
        derivation="synthetic, for tests",
    )


@functools.cache
def _all_profiles() -> dict[str, StepProfile]:
    out: dict[str, StepProfile] = {}
    for gpu in ("h100", "h200"):
        # Llama-3-8B has decode points at many contexts on both GPUs; its KV-read cost per byte is the prior
        # for a model whose points cannot separate it (Qwen3-32B on H100: all its big batches at 256).
        ref = _measured_profile("llama3-8b", gpu)
        per_byte = ref.model.decode_ms_per_kv_token / ref.kv_bytes_per_token
        out[ref.name] = ref
        for model in MODELS:
            if model != "llama3-8b":
                p = _measured_profile(model, gpu, per_byte)
                out[p.name] = p
    a100 = derive_slower_gpu(out["llama3-8b-h100"], "a100")
    out[a100.name] = a100
    out["tiny"] = _tiny()
    return out


def profile_names() -> list[str]:
    return list(_all_profiles())


def profile_arg(text: str) -> str:
    """An argparse type for ``--profile``: a known profile's name. An unknown one was a KeyError's repr at
    start, exit 1 (review qa36c F11), not the exit-2 line naming the flag."""
    if text not in _all_profiles():
        raise argparse.ArgumentTypeError(
            f"unknown step-time profile {text!r}; known: {', '.join(_all_profiles())}"
        )
    return text


def get_profile(name: str) -> StepProfile:
    try:
        return _all_profiles()[name]
    except KeyError:
        raise KeyError(f"unknown step-time profile {name!r}; known: {', '.join(_all_profiles())}") from None


def kv_tokens(profile: StepProfile) -> int:
    return profile.num_gpu_blocks * profile.block_size
