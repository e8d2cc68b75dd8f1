"""The load generator against a real simulated replica over HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kvgate.bench import loadgen, workloads
from kvgate.bench.loadgen import RunConfig

server = pytest.importorskip("kvgate.sim.server")


@pytest.fixture
async def replica() -> AsyncIterator[str]:
    # Time scale 20: a simulated ~7 ms decode step takes ~0.35 ms of wall time.
    rep = server.Replica(server.ReplicaConfig(model="sim-model", time_scale=20.0))
    await rep.start()
    try:
        yield rep.url
    finally:
        await rep.close()


async def test_closed_loop_streams_and_counts_tokens(replica: str) -> None:
    specs = workloads.shared_prefix(
        num_groups=2, num_prompts_per_group=5, system_prompt_len=64, question_len=16, output_len=12
    )
    results = await loadgen.run(specs, RunConfig(base_url=replica, concurrency=4, max_requests=100))
    assert len(results) == 10
    for r in results:
        assert r.ok, r.error
        assert r.status == 200
        assert r.prompt_tokens == 80  # the tokenizer sees exactly one token per rendered id
        assert r.completion_tokens == 12
        assert r.ttft is not None and r.e2e is not None and 0 < r.ttft <= r.e2e
        assert 1 <= len(r.itl) <= 11
        assert r.tpot is not None and r.tpot > 0


async def test_chat_requests(replica: str) -> None:
    specs = workloads.multi_turn_chat(num_sessions=2, turns=2, system_len=20, user_len=5, answer_len=6)
    results = await loadgen.run(specs, RunConfig(base_url=replica, concurrency=2))
    assert len(results) == 4 and all(r.ok and r.completion_tokens == 6 for r in results)


async def test_open_loop_is_bounded_by_count_and_duration(replica: str) -> None:
    specs = workloads.sharegpt_like(count=1000, max_input=64, max_output=4)
    results = await loadgen.run(
        specs, RunConfig(base_url=replica, qps=200.0, max_requests=30, duration=5.0, concurrency=64)
    )
    assert len(results) == 30
    specs = workloads.sharegpt_like(count=1000, max_input=64, max_output=4)
    results = await loadgen.run(
        specs, RunConfig(base_url=replica, qps=50.0, max_requests=1000, duration=0.3, concurrency=64)
    )
    assert 3 <= len(results) <= 40  # ~15 arrivals in 0.3 s at 50 QPS


async def test_errors_are_recorded_not_raised(replica: str) -> None:
    bad = workloads.RequestSpec(prompt_ids=[1, 2, 3], max_tokens=4, model="no-such-model")
    down = "http://127.0.0.1:9"  # discard port: nothing listens
    results = await loadgen.run([bad], RunConfig(base_url=replica))
    assert len(results) == 1 and not results[0].ok and results[0].status == 404
    results = await loadgen.run([bad], RunConfig(base_url=down, request_timeout=5.0))
    assert not results[0].ok and results[0].error
