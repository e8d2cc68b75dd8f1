"""The engine model: batching, token budget, chunked prefill, prefix caching, preemption, LoRA slots."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.kvcache import BlockRemoved, BlockStored, KVEvent
from kvgate.sim.types import SimRequest, StepResult


def tiny(**kw: object) -> Engine:
    return Engine(EngineConfig(profile="tiny", **kw))  # type: ignore[arg-type]


def req(rid: str, prompt: list[int] | int, max_tokens: int = 4, lora: str | None = None) -> SimRequest:
    toks = list(range(1000, 1000 + prompt)) if isinstance(prompt, int) else prompt
    return SimRequest(rid, toks, max_tokens, lora=lora)


def drain(engine: Engine, now: float = 0.0, max_steps: int = 100_000) -> tuple[float, list[StepResult]]:
    steps = []
    while engine.has_work():
        res = engine.step(now)
        assert res.duration > 0
        now += res.duration
        steps.append(res)
        assert len(steps) < max_steps
    return now, steps


def test_one_request_lifecycle_and_counters() -> None:
    e = tiny()
    r = req("a", 40, max_tokens=5)
    e.add_request(r, 1.0)
    end, steps = drain(e, 1.0)
    assert len(steps) == 5  # one prefill step (also samples the first token), four decodes
    assert steps[0].num_prefill_tokens == 40 and steps[0].started == [r]
    assert [s.num_decode_tokens for s in steps[1:]] == [1, 1, 1, 1]
    assert r.first_scheduled_time == 1.0 and r.first_token_time == pytest.approx(1.0 + steps[0].duration)
    assert r.finish_reason == "length" and r.finish_time == pytest.approx(end)
    assert len(r.output_token_ids) == 5 and all(0 <= t < 1000 for t in r.output_token_ids)
    st = e.stats()
    assert (st.num_running, st.num_waiting, st.requests_finished) == (0, 0, 1)
    assert st.prompt_tokens_total == 40 and st.generation_tokens_total == 5
    assert st.kv_cache_usage == 0.0


def test_output_tokens_are_deterministic_per_request() -> None:
    a, b = tiny(), tiny()
    ra, rb, rc = req("same", 20, 8), req("same", 20, 8), req("other", 20, 8)
    a.add_request(ra, 0.0)
    b.add_request(rb, 0.0)
    b.add_request(rc, 0.0)
    drain(a)
    drain(b)
    assert ra.output_token_ids == rb.output_token_ids
    assert ra.output_token_ids != rc.output_token_ids


def test_prefix_hits_at_block_granularity() -> None:
    e = tiny()
    shared = list(range(40))
    first = req("a", [*shared, 1, 2, 3])
    e.add_request(first, 0.0)
    drain(e)
    second = req("b", [*shared, 7, 8, 9, 10])
    e.add_request(second, 0.0)
    _, steps = drain(e)
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 32  # 40 shared tokens = 2 full blocks of 16
    assert steps[0].num_prefill_tokens == 44 - 32
    st = e.stats()
    assert st.prefix_cache_queries == 43 + 44 and st.prefix_cache_hits == 32


@pytest.mark.parametrize(("length", "cached"), [(32, 16), (33, 32), (48, 32), (49, 48)])
def test_last_prompt_token_is_always_computed(length: int, cached: int) -> None:
    e = tiny()
    prompt = list(range(length))
    e.add_request(req("a", prompt), 0.0)
    drain(e)
    again = req("b", list(prompt))
    e.add_request(again, 0.0)
    _, steps = drain(e)
    assert again.num_cached_tokens == cached
    assert steps[0].num_prefill_tokens == length - cached


def test_lora_is_part_of_the_prefix() -> None:
    e = tiny(max_loras=2)
    prompt = list(range(48))
    e.add_request(req("a", prompt, lora="x"), 0.0)
    drain(e)
    other, same = req("b", list(prompt), lora="y"), req("c", list(prompt), lora="x")
    e.add_request(other, 0.0)
    drain(e)
    e.add_request(same, 0.0)
    drain(e)
    assert other.num_cached_tokens == 0 and same.num_cached_tokens == 32


def test_generated_blocks_are_cached_too() -> None:
    # A 20-token prompt plus 30 generated tokens fills 3 blocks; a follow-up turn reuses all of them.
    events: list[KVEvent] = []
    e = Engine(EngineConfig(profile="tiny"), kv_event_sink=events.extend)
    first = req("a", list(range(20)), max_tokens=30)
    e.add_request(first, 0.0)
    drain(e)
    stored = [h for ev in events if isinstance(ev, BlockStored) for h in ev.block_hashes]
    assert len(stored) == 3
    follow = req("b", [*first.prompt_token_ids, *first.output_token_ids, 5, 6])
    e.add_request(follow, 0.0)
    drain(e)
    assert follow.num_cached_tokens == 48


def test_kv_events_chain_and_repeat_stores_nothing() -> None:
    events: list[KVEvent] = []
    e = Engine(EngineConfig(profile="tiny"), kv_event_sink=events.extend)
    prompt = list(range(50))
    e.add_request(req("a", prompt, max_tokens=1), 0.0)
    drain(e)
    stored = [ev for ev in events if isinstance(ev, BlockStored)]
    assert len(stored) == 1
    ev = stored[0]
    assert len(ev.block_hashes) == 3 and ev.parent_block_hash is None
    assert ev.token_ids == prompt[:48] and ev.block_size == 16
    events.clear()
    e.add_request(req("b", list(prompt), max_tokens=1), 0.0)
    drain(e)
    assert not [x for x in events if isinstance(x, BlockStored)]


def test_max_num_seqs_queues_requests() -> None:
    e = tiny(max_num_seqs=4)
    for i in range(10):
        e.add_request(req(f"r{i}", 10, max_tokens=3), 0.0)
    e.step(0.0)
    st = e.stats()
    assert (st.num_running, st.num_waiting) == (4, 6)
    _, steps = drain(e)
    assert e.stats().requests_finished == 10
    assert max(len(s.started) for s in steps) <= 4


def test_token_budget_limits_and_chunks_a_step() -> None:
    e = tiny(max_num_batched_tokens=64)
    reqs = [req(f"r{i}", [i * 100 + k for k in range(50)], max_tokens=2) for i in range(3)]
    for r in reqs:
        e.add_request(r, 0.0)
    res = e.step(0.0)
    # r0 whole (50) + the first 14 tokens of r1; r2 waits for budget.
    assert res.num_prefill_tokens == 64
    assert [r.request_id for r in res.started] == ["r0", "r1"]
    assert e.stats().num_waiting == 1
    assert [r.request_id for r, _ in res.tokens] == ["r0"]


def test_chunked_prefill_splits_a_long_prompt() -> None:
    e = tiny(max_num_batched_tokens=64)
    r = req("long", 200, max_tokens=2)
    e.add_request(r, 0.0)
    _, steps = drain(e)
    assert [s.num_prefill_tokens for s in steps] == [64, 64, 64, 8, 0]
    assert [len(s.tokens) for s in steps] == [0, 0, 0, 1, 1]
    # The longer context makes each later chunk cost more (causal attention).
    assert steps[0].duration < steps[1].duration < steps[2].duration


def test_decodes_go_before_new_prefills() -> None:
    e = tiny(max_num_batched_tokens=32)
    e.add_request(req("a", 20, max_tokens=10), 0.0)
    e.step(0.0)
    e.add_request(req("b", 100, max_tokens=2), 0.0)
    res = e.step(0.0)
    assert res.num_decode_tokens == 1 and res.num_prefill_tokens == 31


def test_kv_exhaustion_preempts_and_everything_completes() -> None:
    # 16 blocks x 16 = 256 tokens of KV; four requests that grow to 190 tokens each cannot all fit.
    kw = {"num_gpu_blocks": 16, "max_model_len": 256}
    e = tiny(**kw)
    reqs = [req(f"r{i}", 40 + i, max_tokens=150) for i in range(4)]
    for r in reqs:
        e.add_request(r, 0.0)
    usage = []
    while e.has_work():
        e.step(0.0)
        usage.append(e.stats().kv_cache_usage)
    st = e.stats()
    assert st.num_preemptions > 0 and st.requests_finished == 4
    assert max(usage) == 1.0
    assert sum(r.num_preemptions for r in reqs) == st.num_preemptions
    assert all(len(r.output_token_ids) == 150 for r in reqs)
    # Recompute changes timing, not tokens: the same requests on a roomy engine give the same outputs.
    roomy = tiny()
    twins = [req(r.request_id, list(r.prompt_token_ids), 150) for r in reqs]
    for r in twins:
        roomy.add_request(r, 0.0)
    drain(roomy)
    assert [r.output_token_ids for r in twins] == [r.output_token_ids for r in reqs]
    assert roomy.stats().num_preemptions == 0


def test_preemption_takes_the_newest_running_request() -> None:
    e = tiny(num_gpu_blocks=8, max_model_len=128)
    old, new = req("old", 60, max_tokens=60), req("new", 60, max_tokens=60)
    e.add_request(old, 0.0)
    e.step(0.0)
    e.add_request(new, 0.0)
    while not (old.num_preemptions or new.num_preemptions):
        e.step(0.0)
    assert new.num_preemptions == 1 and old.num_preemptions == 0
    drain(e)
    assert old.finish_time is not None and new.finish_time is not None


def test_lru_eviction_of_free_cached_blocks() -> None:
    stored: list[list[int]] = []
    removed: list[int] = []

    def sink(events: list[KVEvent]) -> None:
        for ev in events:
            if isinstance(ev, BlockStored):
                stored.append(ev.block_hashes)
            elif isinstance(ev, BlockRemoved):
                removed.extend(ev.block_hashes)

    e = Engine(EngineConfig(profile="tiny", num_gpu_blocks=8, max_model_len=128), kv_event_sink=sink)
    for k in (1, 2, 3):  # 33 + 1 tokens each: 3 blocks, the first 2 full and cached
        e.add_request(req(f"p{k}", [k * 100 + i for i in range(33)], max_tokens=1), 0.0)
        drain(e)
    h1, h2, h3 = stored
    assert e.stats().kv_cache_usage == 0.0  # all free, 6 of the 8 still cached
    # A 3-block newcomer takes the least recently freed blocks: p1's.
    e.add_request(req("new", [9000 + i for i in range(40)], max_tokens=1), 0.0)
    drain(e)
    assert sorted(removed) == sorted(h1)
    assert len(e.pool.lookup(h1, 2)) == 0
    assert len(e.pool.lookup(h2, 2)) == 2 and len(e.pool.lookup(h3, 2)) == 2
    # And a hit really serves them: p3's prefix comes back from the cache.
    probe = req("q3", [300 + i for i in range(32)] + [7, 7])
    e.add_request(probe, 0.0)
    drain(e)
    assert probe.num_cached_tokens == 32


def test_lora_slots_limit_concurrent_adapters_and_loads_cost_time() -> None:
    e = tiny(max_loras=2, lora_load_time_s=0.05)
    for i, ad in enumerate(["a", "b", "c", "d", "a", "c"]):
        e.add_request(req(f"r{i}", 10, max_tokens=3, lora=ad), 0.0)
    res = e.step(0.0)
    st = e.stats()
    assert st.running_loras == ["a", "b"]
    assert st.waiting_loras == ["c", "d"]
    assert [r.request_id for r in res.started] == ["r0", "r1", "r4"]  # r4 reuses slot "a"
    assert res.duration > 2 * 0.05  # two cold adapters loaded in this step
    seen = set()
    now = res.duration
    while e.has_work():
        res = e.step(now)
        now += res.duration
        st = e.stats()
        assert len(st.running_loras) <= 2
        seen.update(st.running_loras)
    assert seen >= {"c", "d"}
    assert e.lora_loads == 4
    # A warm adapter adds nothing: the same workload again on base model vs adapter "a" (loaded) match.
    base, warm = tiny(), tiny(max_loras=1, lora_load_time_s=0.05)
    warm.add_request(req("w0", 10, 1, lora="a"), 0.0)
    drain(warm)
    base.add_request(req("x", 10, 1), 0.0)
    warm.add_request(req("w1", 10, 1, lora="a"), 0.0)
    assert warm.step(0.0).duration == pytest.approx(base.step(0.0).duration)


def test_abort_waiting_and_running() -> None:
    e = tiny(max_num_seqs=1)
    a, b = req("a", 30, 10), req("b", 30, 10)
    e.add_request(a, 0.0)
    e.add_request(b, 0.0)
    e.step(0.0)
    assert e.stats().kv_cache_usage > 0
    assert e.abort("b") and e.abort("a")
    assert not e.abort("a")
    assert a.finish_reason == b.finish_reason == "abort"
    assert not e.has_work() and e.stats().kv_cache_usage == 0.0


def test_max_model_len_finishes_with_length_and_validation() -> None:
    e = tiny(max_model_len=64, num_gpu_blocks=8)
    r = req("a", 60, max_tokens=100)
    e.add_request(r, 0.0)
    drain(e)
    assert r.finish_reason == "length" and len(r.output_token_ids) == 4
    with pytest.raises(ValueError):
        e.add_request(req("big", 64), 0.0)
    with pytest.raises(ValueError):
        e.add_request(req("empty", []), 0.0)
    e.add_request(req("dup", 5), 0.0)
    with pytest.raises(ValueError):
        e.add_request(req("dup", 5), 0.0)
    with pytest.raises(ValueError):
        tiny(max_model_len=4096)  # larger than the tiny KV cache


def test_profile_defaults_fill_the_config() -> None:
    cfg = EngineConfig(profile="llama3-8b-h100")
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.block_size) == (8192, 1024, 16)
    assert 25_000 <= cfg.num_gpu_blocks <= 27_500
    assert cfg.max_model_len == 131072
    a100 = EngineConfig(profile="llama3-8b-a100")
    assert (a100.max_num_batched_tokens, a100.max_num_seqs) == (2048, 256)
    assert EngineConfig(profile="llama3-8b-h100", block_size=32).num_gpu_blocks == cfg.num_gpu_blocks // 2


def test_step_time_grows_with_batch_and_context() -> None:
    def decode_step(n: int, prompt: int) -> float:
        e = Engine(EngineConfig(profile="llama3-8b-h100"))
        for i in range(n):
            e.add_request(req(f"r{i}", [i, *range(prompt - 1)], max_tokens=100), 0.0)
        res = e.step(0.0)
        while res.num_prefill_tokens:
            res = e.step(0.0)
        assert res.num_decode_tokens == n
        return res.duration

    assert decode_step(1, 1000) < decode_step(64, 1000) < decode_step(256, 1000)
    assert decode_step(64, 1000) < decode_step(64, 4000)


def test_reset_prefix_cache() -> None:
    e = tiny()
    e.add_request(req("a", 40, 1), 0.0)
    drain(e)
    assert e.reset_prefix_cache()
    again = req("b", 40, 1)
    e.add_request(again, 0.0)
    drain(e)
    assert again.num_cached_tokens == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # which shared prefix
            st.integers(1, 60),  # own tokens
            st.integers(1, 40),  # max_tokens
            st.sampled_from([None, "a", "b", "c"]),
            st.booleans(),  # abort it mid-run
        ),
        min_size=1,
        max_size=25,
    ),
    st.integers(8, 40),  # KV blocks
    st.integers(16, 128),  # token budget
)
def test_engine_invariants_under_random_workloads(
    specs: list[tuple[int, int, int, str | None, bool]], blocks: int, budget: int
) -> None:
    # The events alone must reproduce the cache's content: what a KV-event indexer would believe.
    indexed: set[int] = set()

    def sink(events: list[KVEvent]) -> None:
        for ev in events:
            if isinstance(ev, BlockStored):
                assert not indexed & set(ev.block_hashes)
                indexed.update(ev.block_hashes)
            elif isinstance(ev, BlockRemoved):
                assert set(ev.block_hashes) <= indexed
                indexed.difference_update(ev.block_hashes)

    cfg = EngineConfig(
        profile="tiny",
        num_gpu_blocks=blocks,
        max_model_len=blocks * 16,
        max_num_batched_tokens=budget,
        max_loras=2,
    )
    e = Engine(cfg, kv_event_sink=sink)
    reqs = []
    for i, (pfx, own, max_tokens, lora, _) in enumerate(specs):
        prompt = [pfx * 1000 + k for k in range(24)] + [5000 + i * 100 + k for k in range(own)]
        if len(prompt) >= blocks * 16:
            continue
        r = req(f"r{i}", prompt, max_tokens, lora)
        e.add_request(r, 0.0)
        reqs.append((r, specs[i][4]))
    steps = 0
    while e.has_work():
        res = e.step(float(steps))
        steps += 1
        assert res.num_prefill_tokens + res.num_decode_tokens <= budget
        st_ = e.stats()
        assert st_.num_running <= e.config.max_num_seqs and len(st_.running_loras) <= 2
        held = sum(len(s.blocks) for s in e._running)
        assert sum(e.pool.ref) == held  # every held block is owned by exactly one running reference
        assert e.pool.num_free == blocks - sum(1 for x in e.pool.ref if x > 0)
        assert indexed == set(e.pool.cached)
        if steps == 3:
            for r, abort in reqs:
                if abort and r.finish_reason is None:
                    assert e.abort(r.request_id)
        assert steps < 10_000
    st_ = e.stats()
    assert st_.kv_cache_usage == 0.0 and st_.num_waiting == 0
    for r, _ in reqs:
        assert r.finish_reason in ("length", "abort")
        if r.finish_reason == "length":
            assert len(r.output_token_ids) == min(r.max_tokens, e.config.max_model_len - r.num_prompt_tokens)
    assert st_.requests_finished == sum(1 for r, _ in reqs if r.finish_reason == "length")
    assert st_.prefix_cache_hits <= st_.prefix_cache_queries


def test_chunked_output_tokens_match_the_per_position_formula() -> None:
    # The engine computes tokens ahead in chunks (numpy uint64 from 32 tokens on); every chunk must equal
    # the plain per-position formula, including positions whose product overflows 64 bits.
    from kvgate.sim.engine import output_token, output_tokens

    for seed in (0, 1, (1 << 64) - 1, 0x0123456789ABCDEF):
        for start, count, vocab in ((0, 5, 1000), (0, 64, 128256), (10**9, 40, 151936), (7, 31, 3)):
            want = [output_token(seed, p, vocab) for p in range(start, start + count)]
            assert output_tokens(seed, start, count, vocab) == want
