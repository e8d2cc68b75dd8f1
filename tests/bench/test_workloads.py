"""Workloads: seeded, token-exact with the simulator's tokenizer, shaped as documented."""

from __future__ import annotations

import itertools
import random
import statistics

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


def _rag(seed: int, count: int, **kw: object) -> list[workloads.RequestSpec]:
    return list(workloads.rag_stream(count=count, seed=seed, **kw))  # type: ignore[arg-type]


def test_rag_is_deterministic_per_seed_and_documents_do_not_depend_on_the_count() -> None:
    a, b = _rag(7, 200), _rag(7, 200)

    def shape(specs: list[workloads.RequestSpec]) -> list[tuple[list[int], int, str]]:
        return [(s.prompt_ids, s.max_tokens, s.group) for s in specs]

    assert shape(a) == shape(b)
    assert [s.prompt_ids for s in _rag(7, 50)] == [s.prompt_ids for s in a[:50]]
    assert [s.prompt_ids for s in _rag(8, 50)] != [s.prompt_ids for s in a[:50]]


def test_rag_document_depends_only_on_seed_and_document() -> None:
    # One document per request and no question: the prompt is the system prompt and the document, whole.
    alone = _rag(3, 150, system_len=16, docs_per_request=1, question_len=(0, 0), corpus=40)
    docs = {s.group: s.prompt_ids[16:] for s in alone}
    assert len(docs) > 10
    # Another shape on the same seed (the main draws go differently: another system prompt, popularity,
    # questions, documents per request): every top document reads the same, whole.
    other = _rag(3, 150, system_len=48, docs_per_request=3, question_len=(5, 9), zipf=0.5, corpus=40)
    same = [s for s in other if s.group in docs]
    assert len({s.group for s in same}) > 10
    for s in same:
        doc = docs[s.group]
        assert s.prompt_ids[48 : 48 + len(doc)] == doc
    # Another seed: other documents.
    seed4 = _rag(4, 150, system_len=16, docs_per_request=1, question_len=(0, 0), corpus=40)
    both = [s for s in seed4 if s.group in docs]
    assert both and all(s.prompt_ids[16:] != docs[s.group] for s in both)


def test_rag_prompt_is_shared_system_then_top_document_then_more_then_a_question() -> None:
    kw = {"system_len": 64, "corpus": 6, "doc_len": (20, 40), "docs_per_request": 3, "question_len": (5, 9),
          "output_len": (3, 4)}  # fmt: skip
    specs = _rag(1, 300, **kw)
    system = specs[0].prompt_ids[:64]
    by_top: dict[str, list[list[int]]] = {}
    for s in specs:
        assert s.prompt_ids[:64] == system
        assert 64 + 3 * 20 + 5 <= len(s.prompt_ids) <= 64 + 3 * 40 + 9
        assert 3 <= s.max_tokens <= 4
        by_top.setdefault(s.group, []).append(s.prompt_ids[64:])
    assert len(by_top) == 6  # every document led some request
    for rest in by_top.values():  # the same top document: the same >= 20 tokens after the system prompt
        assert all(r[:20] == rest[0][:20] for r in rest)
    firsts = [rest[0][:20] for rest in by_top.values()]
    assert len({tuple(f) for f in firsts}) == 6
    assert len({tuple(s.prompt_ids) for s in specs}) == 300  # the question makes every prompt unique


def test_rag_default_shape_documents_repeat_whole_prompts_do_not() -> None:
    specs = _rag(0, 2000)
    lens = [len(s.prompt_ids) for s in specs]
    assert min(lens) >= 1024 + 3 * 400 + 30 and max(lens) <= 1024 + 3 * 2000 + 150
    assert 4000 < statistics.fmean(lens) < 5400  # ~1,024 + 3 x 1,200 + 90
    assert all(64 <= s.max_tokens <= 256 for s in specs)
    assert len({tuple(s.prompt_ids) for s in specs}) == len(specs)
    tops = [s.group for s in specs]
    # Zipf(1.0) over 1,000 documents: the most popular leads 1 / H(1000) = 13.4 % of requests.
    assert 0.11 < tops.count("d0") / len(tops) < 0.16
    seen: set[str] = set()
    repeats = 0
    for g in tops:
        repeats += g in seen
        seen.add(g)
    assert repeats / len(tops) > 0.7  # the top document was retrieved before
    top_starts = {tuple(s.prompt_ids[1024:1100]) for s in specs}  # the top document's first 76 tokens
    assert len(top_starts) == len(set(tops))
    # Prompt tokens an unbounded prefix cache (16-token blocks, as the simulator's) would serve: the
    # system prompt, the top document and, when the same documents lead again, more; 44 % on seed 0.
    cached: set[int] = set()
    hit = 0
    for s in specs:
        h, matched = 0, True
        for b in range(len(s.prompt_ids) // 16):
            h = hash((h, tuple(s.prompt_ids[16 * b : 16 * b + 16])))
            matched = matched and h in cached
            hit += 16 * matched
            cached.add(h)
    assert 0.40 < hit / sum(lens) < 0.52
