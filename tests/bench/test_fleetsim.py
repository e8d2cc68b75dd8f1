"""The virtual-clock fleet simulator: the real picker over the simulator's engines, deterministic per seed."""

from __future__ import annotations

from kvgate.bench import workloads
from kvgate.bench.fleetsim import FleetConfig, FleetSim, ReplicaSpec


def _run(policy: str, seed: int, qps: float = 60.0, duration: float = 8.0) -> dict[str, object]:
    cfg = FleetConfig(
        # A small KV cache (6,400 tokens each): all 12 prefixes fit the fleet, not one replica.
        replicas=[ReplicaSpec("llama3-8b-h100", 4, {"num_gpu_blocks": 400})],
        policy=policy,
        qps=qps,
        duration=duration,
        seed=seed,
        max_requests=2000,
    )
    specs = workloads.shared_prefix_stream(
        num_groups=12, system_prompt_len=1024, question_len=64, output_len=16, count=2000, seed=seed
    )
    return FleetSim(cfg, specs).run().row


def test_same_seed_same_results_different_seed_differs() -> None:
    a, b = _run("kvgate", 1), _run("kvgate", 1)
    keys = ("requests", "ttft_p50", "ttft_p90", "e2e_p99", "prefix_hit_rate", "max_replica_share")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    c = _run("kvgate", 2)
    assert (a["requests"], a["ttft_p50"]) != (c["requests"], c["ttft_p50"])


def test_every_request_completes_and_counts_add_up() -> None:
    row = _run("round-robin", 3)
    assert row["errors"] == 0 and row["unfinished"] == 0
    n = row["requests"]
    assert isinstance(n, int) and 60 * 8 * 0.8 < n < 60 * 8 * 1.2  # Poisson at 60 QPS for 8 s
    assert row["output_tok_per_s"] is not None and row["ttft_p50"] is not None


def test_prefix_aware_policy_beats_round_robin_on_hit_rate() -> None:
    # 12 groups x 1k-token prefixes over 4 replicas: affinity keeps each group on one replica.
    kv = _run("kvgate", 4)
    rr = _run("round-robin", 4)
    assert isinstance(kv["prefix_hit_rate"], float) and isinstance(rr["prefix_hit_rate"], float)
    assert kv["prefix_hit_rate"] > rr["prefix_hit_rate"] + 0.1
