"""The live multi-turn benchmark's workload driver: request shapes, send offsets, per-class figures and
the load generator's end-of-run cut (no timing assertions)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.bench import live_multiturn as lm
from kvgate.bench import loadgen
from kvgate.bench.mixed import BURST_SIZE, FAMILIES
from kvgate.bench.workloads import render


def test_requests_have_the_family_shapes_and_wall_send_offsets() -> None:
    load = lm.MixedLiveLoad("a", 1, qps=9.0, warmup=10.0, duration=30.0, think_scale=0.25, grace=8.0)
    fam = FAMILIES["a"]
    sim = load.specs()
    wall, count = load.send_plan(time_scale=0.5)
    assert count == len(wall) == len(sim) > 100
    # Offsets: sorted, inside the horizon, and converted to wall seconds (simulated / time scale).
    ats = [s.at for s in sim]
    assert all(a is not None for a in ats) and ats == sorted(ats)  # type: ignore[type-var]
    assert ats[0] >= 0 and ats[-1] < 40.0  # type: ignore[operator]
    assert [w.at for w in wall] == [a / 0.5 for a in ats]  # type: ignore[operator]
    assert load.cut_after() == 48.0
    assert lm.compressed(fam, 0.25).think_s == fam.think_s * 0.25 == load.fam().think_s

    by_class: dict[str, list] = {"session": [], "burst": [], "oneoff": []}  # type: ignore[type-arg]
    for s in sim:
        by_class[lm.request_class(s.group)].append(s)
    assert all(by_class.values())
    # Sessions: every turn resends the whole conversation (its text too), after a compressed think time.
    sessions: dict[str, list] = {}  # type: ignore[type-arg]
    for s in by_class["session"]:
        assert s.session is not None and s.group.startswith("s")
        assert fam.answer_len[0] <= s.max_tokens <= fam.answer_len[1]
        sessions.setdefault(s.session, []).append(s)
    assert any(len(turns) >= 3 for turns in sessions.values())
    for turns in sessions.values():
        first = turns[0]
        assert fam.system_len[0] + fam.user_len[0] <= len(first.prompt_ids)
        for prev, nxt in itertools.pairwise(turns):
            assert nxt.prompt_ids[: len(prev.prompt_ids)] == prev.prompt_ids
            assert len(nxt.prompt_ids) >= len(prev.prompt_ids) + prev.max_tokens + fam.user_len[0]
            assert render(nxt.prompt_ids).startswith(render(prev.prompt_ids))
            assert nxt.at - prev.at >= fam.turn_gap * 0.25  # type: ignore[operator]
    # Bursts: 12 requests of one tenant (shared prefix + a question) within 50 ms.
    bursts: dict[tuple[str, int], list] = {}  # type: ignore[type-arg]
    for s in by_class["burst"]:
        assert len(s.prompt_ids) == fam.tenant_prefix + fam.burst_question
        assert s.max_tokens == fam.burst_output
        bursts.setdefault((s.group, int(s.at * 20)), []).append(s)  # type: ignore[operator]
    sizes = sorted(len(b) for b in bursts.values())
    assert sum(sizes) % BURST_SIZE == 0 and sizes[-1] >= BURST_SIZE // 2
    for group in {s.group for s in by_class["burst"]}:
        prefixes = {tuple(s.prompt_ids[: fam.tenant_prefix]) for s in by_class["burst"] if s.group == group}
        assert len(prefixes) == 1
    # Decode-heavy one-offs: short prompts, long outputs.
    for s in by_class["oneoff"]:
        assert fam.oneoff_prompt[0] <= len(s.prompt_ids) <= fam.oneoff_prompt[1]
        assert fam.oneoff_output[0] <= s.max_tokens <= fam.oneoff_output[1]


def test_default_runs_are_one_tuning_and_one_validation_run() -> None:
    assert [lm.set_of(f, s) for f, s in lm.DEFAULT_RUNS] == ["tuning", "validation"]
    assert lm.parse_runs("a:2,c:103") == [("a", 2), ("c", 103)]
    with pytest.raises(SystemExit):
        lm.parse_runs("z:1")


def test_class_figures_skip_the_warmup_and_count_cuts() -> None:
    def res(group: str, start: float, ttft: float, cached: int, prompt: int, cut: bool = False):  # type: ignore[no-untyped-def]
        return loadgen.RequestResult(
            group, start, ok=True, ttft=ttft, e2e=1.0, prompt_tokens=prompt, cached_tokens=cached, cut=cut
        )

    results = [
        res("s1", 0.5, 9.0, 0, 100),  # warm-up: left out
        res("s1", 2.0, 0.1, 80, 100),
        res("t3", 2.0, 0.2, 50, 100),
        res("oneoff", 3.0, 0.3, 0, 0, cut=True),
        loadgen.RequestResult("t3", 3.0, error="cut: no first token by the run's end"),
    ]
    got = lm.class_figures(results, warmup_wall=1.0, ts=2.0)
    assert got["cut"] == 1
    assert got["session_ttft_p90"] == pytest.approx(0.2) and got["session_hit"] == 0.8
    assert got["burst_ttft_p90"] == pytest.approx(0.4) and got["burst_hit"] == 0.5
    assert got["oneoff_ttft_p90"] == pytest.approx(0.6) and got["oneoff_hit"] is None


def test_ratios_are_to_sglang_cache_aware_of_the_same_run() -> None:
    rows = [
        {"router": lm.REFERENCE_ROUTER, "family": "a", "seed": 1, "ttft_p50": 0.2, "ttft_p90": 0.4},
        {"router": "kvgate (default)", "family": "a", "seed": 1, "ttft_p50": 0.1, "ttft_p90": 0.6},
        {"router": "kvgate (default)", "family": "b", "seed": 101, "ttft_p50": 0.1, "ttft_p90": 0.6},
    ]
    lm.add_ratios(rows)
    assert rows[1]["p50_vs_sglang"] == 0.5 and rows[1]["p90_vs_sglang"] == pytest.approx(1.5)
    assert rows[2]["p90_vs_sglang"] is None


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    """``/v1/completions``: one streamed token then a long pause; ``/never`` prefix: no token at all."""

    async def completions(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if (await request.json()).get("model") != "never":
            chunk = {"choices": [{"text": " abc"}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await asyncio.sleep(60)
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_requests_still_streaming_at_the_cut_count_once_they_have_a_first_token(
    slow_server: str,
) -> None:
    from kvgate.bench.workloads import RequestSpec

    specs = [RequestSpec([1, 2, 3], 500, at=0.0), RequestSpec([1, 2, 3], 500, model="never", at=0.0)]
    # The cut is wall-clock (the run's end), so whether the first request has its token by then depends on
    # the machine: on a loaded one (a GC pause, load 8+) even one second from the run's start to the token
    # can pass. A run where no request had a token at the cut did not set the scene: it is run again with a
    # later cut. A loadgen that never counts a token before the cut fails all three.
    for cut_after in (1.0, 4.0, 16.0):
        cfg = loadgen.RunConfig(slow_server, qps=10.0, max_requests=2, duration=1.0, cut_after=cut_after)
        results = await loadgen.run(specs, cfg)
        assert len(results) == 2, results
        if any(r.ttft is not None for r in results):
            break
    got = {r.ok: r for r in results}
    assert set(got) == {True, False}, results
    assert got[True].cut and got[True].ttft is not None and got[True].completion_tokens == 1
    assert not got[False].cut and got[False].error == "cut: no first token by the run's end"


@pytest.mark.slow
def test_live_run_end_to_end(tmp_path: Path) -> None:
    """A tiny run through ``kvgate serve`` in front of the simulated fleet (real processes)."""
    argv = ["--runs", "b:101", "--policies", "kvgate", "--qps", "3", "--warmup", "1", "--duration", "3"]
    assert lm.main([*argv, "--grace", "2", "--no-netns", "--out", str(tmp_path)]) == 0
    payload = orjson.loads((tmp_path / "live-multiturn.json").read_bytes())
    (row,) = payload["rows"]
    assert row["router"] == "kvgate (default)" and row["set"] == "validation" and row["requests"] > 0
    assert "| kvgate (default) |" in (tmp_path / "live-multiturn.md").read_text()


def test_session_moves_follow_each_session_s_replica_from_the_response_ids() -> None:
    def turn(group: str, start: float, replica: int | None) -> loadgen.RequestResult:
        rid = None if replica is None else f"cmpl-{replica}-4242-abcdef12-{int(start * 10)}"
        return loadgen.RequestResult(group, start, ok=True, ttft=0.1, e2e=1.0, response_id=rid)

    results = [
        turn("s1", 0.5, 0),  # warm-up: sets the holder, not counted
        turn("s1", 2.0, 0),
        turn("s1", 3.0, 2),  # moved
        turn("s2", 2.5, 1),  # first turn: no move
        turn("s2", 4.0, None),  # no id (e.g. an error): skipped
        turn("s2", 5.0, 1),
        turn("t1", 2.0, 3),  # bursts are not sessions
    ]
    assert lm.session_moves(list(reversed(results)), warmup_wall=1.0) == {
        "session_turns": 4,
        "session_moves": 1,
    }
    assert lm.session_moves([], warmup_wall=1.0) == {"session_turns": 0, "session_moves": None}


async def test_the_load_generator_records_the_response_id() -> None:
    from kvgate.bench.workloads import RequestSpec
    from kvgate.sim.server import Replica, ReplicaConfig

    rep = Replica(ReplicaConfig(model="sim-model", time_scale=20.0), index=3)
    await rep.start()
    try:
        (res,) = await loadgen.run([RequestSpec([1, 2, 3], 4)], loadgen.RunConfig(rep.url, concurrency=1))
    finally:
        await rep.close()
    assert res.ok and res.response_id is not None and lm._SIM_ID.match(res.response_id)
    assert lm._SIM_ID.match(res.response_id).group(1) == "3"  # type: ignore[union-attr]
