"""The simulator's prefix cache against a real vLLM on the same request sequence (token-id prompts).

Both sides get the same token ids (completions with ``prompt`` as a list of ints), so tokenization cannot
differ; the simulator is configured like the server: block 128, the server's usable blocks (vLLM keeps one
of ``--num-gpu-blocks-override`` as its null block), same max model length and output length.
"""

from __future__ import annotations

import pytest

from kvgate.realvllm.bench import fidelity_sequence, real_hits, sim_hits

from .fleet import BLOCK, NUM_BLOCKS, RealFleet

# Real servers on 2 shared cores: some tests take minutes.
pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(900)]


def test_sim_prefix_hits_match_real_vllm_per_request(real_fleet: RealFleet):
    seq = fidelity_sequence(block=BLOCK)
    real = real_hits(real_fleet.servers[0], seq)
    sim = sim_hits(seq, block_size=BLOCK, num_gpu_blocks=NUM_BLOCKS - 1, max_model_len=2048)
    print(f"real hits per request: {real}\nsim  hits per request: {sim}")
    assert all(h % BLOCK == 0 for h in real)  # vLLM hits whole blocks only
    assert sum(real) > 0 and any(h == 0 for h in real[1:])  # both hits and eviction-driven misses occur
    assert sim == real
