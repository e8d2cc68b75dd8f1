"""Named fleet-simulator scenarios: fleet, workload, QPS ladder and the policies they compare.

Each scenario scales a published benchmark down to what a 2-core machine simulates in minutes; the
``how_scaled`` text says how, and lands in the JSON and the markdown next to the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kvgate.bench import workloads
from kvgate.bench.fleetsim import ReplicaSpec
from kvgate.bench.workloads import RequestSpec

ALL_POLICIES = ["round-robin", "random", "least-request", "sglang-cache-aware", "reference", "kvgate"]

WorkloadFn = Callable[[int, int], Iterator[RequestSpec]]  # (seed, count) -> specs


@dataclass(slots=True)
class Scenario:
    name: str
    title: str
    replicas: list[ReplicaSpec]
    workload: WorkloadFn
    # QPS points as fractions of the probed fleet capacity (see ``capacity_probe``).
    load_fractions: list[float]
    duration: float  # virtual seconds of measured arrivals per point
    how_scaled: str
    policies: list[str] = field(default_factory=lambda: list(ALL_POLICIES))
    slo_ttft: float = 2.0
    # Virtual seconds of unmeasured traffic first (fills prefix caches as in a long-running fleet).
    warmup: float = 10.0
    # Capacity = the most req/s any of these policies serves when offered ``probe_qps`` (more than
    # the fleet can take): a property of fleet + workload under the best routing tried.
    probe_policies: list[str] = field(default_factory=lambda: list(ALL_POLICIES))
    probe_qps: float = 400.0
    # The load fraction the key figure is read at.
    key_fraction: float = 0.8
    quick_fractions: list[float] = field(default_factory=lambda: [0.5, 0.8])
    quick_duration: float = 20.0
    extra: dict[str, Any] = field(default_factory=dict)


def _sharegpt(seed: int, count: int) -> Iterator[RequestSpec]:
    return workloads.sharegpt_like(count=count, seed=seed)


# llm-d "KV-cache wins": 150 customers x 6k-token contexts, 1.2k-token queries, Qwen3-32B on 8 pods of
# 2 x H100. Token lengths are kept; each pod becomes one H200 replica, whose KV cache (~249k tokens)
# is close to the 2 x H100 pod's (~300k after weights), so 150 x 6k = 922k tokens of contexts fit the
# fleet (~2M) only if customers are partitioned across replicas, never one replica: the same regime.
def _kv_wins(seed: int, count: int) -> Iterator[RequestSpec]:
    return workloads.shared_prefix_stream(
        num_groups=150,
        system_prompt_len=6144,
        question_len=1229,
        output_len=128,
        count=count,
        seed=seed,
    )


def _hetero(seed: int, count: int) -> Iterator[RequestSpec]:
    return workloads.shared_prefix_stream(
        num_groups=40,
        system_prompt_len=1024,
        question_len=200,
        output_len=120,
        count=count,
        seed=seed,
    )


def _lora(seed: int, count: int) -> Iterator[RequestSpec]:
    return workloads.multi_lora(count=count, num_adapters=15, input_len=256, output_len=128, seed=seed)


# Long-context RAG (validation only, never tuned on: docs/benchmarks.md "Never-tuned validation: rag"):
# a 1k-token system prompt shared by all, 3 of 1,000 documents (400-2,000 tokens) by Zipf popularity,
# a short question; ~4.7k-token prompts on a mixed fleet whose KV holds ~30% of the corpus.
def _rag(seed: int, count: int) -> Iterator[RequestSpec]:
    return workloads.rag_stream(count=count, seed=seed)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            name="sharegpt",
            title="10 x Llama-3-8B on H100, ShareGPT-like mix, QPS sweep",
            replicas=[ReplicaSpec("llama3-8b-h100", 10)],
            workload=_sharegpt,
            load_fractions=[0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1],
            duration=60.0,
            how_scaled=(
                "The reference's own benchmark (10 Llama-2 replicas on H100, ShareGPT, 100-1000 QPS) with "
                "Llama-3-8B's measured H100 step times; ShareGPT-like lognormal lengths (median ~220 in / "
                "~150 out); the QPS ladder is expressed as fractions of the fleet's probed capacity."
            ),
            probe_qps=600.0,
            # Prefix-free traffic: routing barely moves capacity, one probe is enough.
            probe_policies=["least-request"],
        ),
        Scenario(
            name="shared-prefix",
            title="8 x Qwen3-32B on H200, 150 customers x 6k-token contexts + 1.2k queries (llm-d KV wins)",
            replicas=[ReplicaSpec("qwen3-32b-h200", 8)],
            workload=_kv_wins,
            load_fractions=[0.2, 0.4, 0.6, 0.8, 0.9, 1.0],
            duration=60.0,
            how_scaled=(
                "llm-d 'KV-cache wins' (8 pods x 2 H100, Qwen3-32B, 150 customers x 6k-token contexts, "
                "1.2k-token queries) at full token lengths (6,144 + 1,229 prompt tokens, 128 output); each "
                "2 x H100 pod is modelled as one H200 (measured Qwen3-32B step times; its ~249k-token KV "
                "cache is close to the pod's ~300k), so the 922k tokens of contexts fit the fleet only if "
                "customers are partitioned across replicas. Customers are drawn uniformly per request."
            ),
            probe_qps=80.0,
            warmup=30.0,
            quick_duration=30.0,
            # Prefix-blind policies top out far lower (~11 req/s, measured): probe the aware ones.
            probe_policies=["reference", "kvgate", "sglang-cache-aware"],
        ),
        Scenario(
            name="hetero",
            title="Heterogeneous fleet: 4 x Llama-3-8B on H200 + 4 on A100 (derived), shared prefixes",
            replicas=[ReplicaSpec("llama3-8b-h200", 4), ReplicaSpec("llama3-8b-a100", 4)],
            workload=_hetero,
            load_fractions=[0.4, 0.6, 0.8, 0.9, 1.0],
            duration=60.0,
            how_scaled=(
                "Fast and slow replicas side by side (A100 step times derived from the H100 measurements by "
                "bandwidth and FLOP/s ratios); 40 customers x 1k-token prompts + 200-token questions."
            ),
            probe_qps=500.0,
            probe_policies=["reference", "kvgate", "least-request"],
            quick_duration=15.0,
        ),
        Scenario(
            name="multi-lora",
            title="8 x Llama-3-8B on H100, 15 LoRA adapters, max_loras 3",
            replicas=[ReplicaSpec("llama3-8b-h100", 8, {"max_loras": 3})],
            workload=_lora,
            load_fractions=[0.4, 0.6, 0.8, 0.9],
            duration=40.0,
            how_scaled="The reference's LoRA regression shape (15 adapters, max-lora 3), decode-heavy.",
            probe_qps=400.0,
        ),
        Scenario(
            name="rag",
            title=(
                "Long-context RAG on a mixed fleet: 4 x Qwen3-32B on H200 (KV cut to 64k tokens) + 4 on H100 "
                "(25k), shared system prompt + 3 Zipf-popular documents of 1,000"
            ),
            replicas=[
                ReplicaSpec("qwen3-32b-h200", 4, {"num_gpu_blocks": 4096}),
                ReplicaSpec("qwen3-32b-h100", 4),
            ],
            workload=_rag,
            load_fractions=[0.3, 0.5, 0.7, 0.8, 0.9, 1.0],
            duration=60.0,
            how_scaled=(
                "Retrieval-augmented generation: every prompt is a 1,024-token system prompt shared "
                "by all, 3 distinct documents (400-2,000 tokens each, fixed per document) drawn from a "
                "corpus of 1,000 with Zipf(1.0) popularity, top-ranked first, and a 30-150-token "
                "question; 64-256 output tokens. Documents repeat, whole prompts do not. Mixed fleet: "
                "four Qwen3-32B H200 replicas with the KV cache cut to 4,096 blocks (64k tokens) and four "
                "H100 ones (1,581 blocks, ~25k): ~360k tokens of KV against a ~1.2M-token corpus. "
                "Validation only: never used for tuning."
            ),
            policies=["round-robin", "least-request", "sglang-cache-aware", "reference", "kvgate"],
            warmup=60.0,
            probe_qps=60.0,
            probe_policies=["kvgate", "sglang-cache-aware"],
            quick_duration=60.0,
        ),
    ]
}
