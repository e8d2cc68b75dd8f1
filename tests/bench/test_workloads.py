"""Workloads: seeded, token-exact with the simulator's tokenizer, shaped as documented."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.bench import workloads
from kvgate.bench.workloads import render


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=workloads.VOCAB - 1), min_size=1, max_size=300))
def test_rendered_ids_tokenize_one_token_per_id(ids: list[int]) -> None:
    from kvgate.sim.tokenizer import get_tokenizer

    text = render(ids)
    assert len(get_tokenizer().encode(text)) == len(ids)
    assert abs(len(text) / len(ids) - 4.0) <= 1.0


def test_shared_prefix_groups_share_exactly_the_system_prompt() -> None:
    specs = list(
        workloads.shared_prefix(
            num_groups=3, num_prompts_per_group=4, system_prompt_len=50, question_len=10, output_len=7, seed=1
        )
    )
    assert len(specs) == 12
    by_group: dict[str, list[list[int]]] = {}
    for s in specs:
        assert len(s.prompt_ids) == 60 and s.max_tokens == 7
        by_group.setdefault(s.group, []).append(s.prompt_ids)
    assert len(by_group) == 3
    prefixes = {g: ids[0][:50] for g, ids in by_group.items()}
    for g, prompts in by_group.items():
        assert all(p[:50] == prefixes[g] for p in prompts)
        assert len({tuple(p[50:]) for p in prompts}) == len(prompts)  # questions differ
    assert len({tuple(p) for p in prefixes.values()}) == 3
    # Shuffled: not all of one group first.
    assert [s.group for s in specs] != sorted(s.group for s in specs)


def test_same_seed_same_workload_different_seed_differs() -> None:
    def make(seed: int) -> list[list[int]]:
        return [s.prompt_ids for s in workloads.sharegpt_like(count=20, seed=seed)]

    assert make(3) == make(3)
    assert make(3) != make(4)


def test_multi_turn_context_grows_and_extends_previous_turn() -> None:
    specs = list(workloads.multi_turn_chat(num_sessions=2, turns=3, system_len=20, user_len=5, answer_len=8))
    assert len(specs) == 6
    s0 = [s for s in specs if s.session == "session-0"]
    for prev, cur in itertools.pairwise(s0):
        assert cur.prompt_ids[: len(prev.prompt_ids)] == prev.prompt_ids
        assert len(cur.prompt_ids) == len(prev.prompt_ids) + 8 + 5
        assert cur.messages is not None and len(cur.messages) == len(prev.messages or []) + 2
    assert s0[-1].messages is not None and s0[-1].messages[-1]["role"] == "user"


def test_multi_lora_uses_many_adapters_as_model_names() -> None:
    specs = list(workloads.multi_lora(count=300, num_adapters=15, seed=2))
    names = {s.target_model for s in specs}
    assert len(names) == 15 and all(n.startswith("adapter-") for n in names)


def test_bursts_land_together() -> None:
    specs = list(workloads.bursts(workloads.sharegpt_like(count=30), burst_size=10, period=2.0, jitter=0.01))
    ats = [s.at for s in specs]
    assert all(a is not None for a in ats)
    assert max(a for a in ats[:10] if a is not None) < 0.011
    assert 2.0 <= min(a for a in ats[10:20] if a is not None) < 2.011


def test_poisson_offsets_rate() -> None:
    offs = list(workloads.poisson_offsets(random.Random(0), qps=50.0, count=5000))
    assert offs == sorted(offs)
    assert 45.0 < 5000 / offs[-1] < 55.0
