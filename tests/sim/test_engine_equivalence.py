"""The optimised engine behaves exactly like the plain one it replaced (``_reference_engine.py``).

Seeded random workloads (shared prefixes, LoRA adapters, aborts, prefix-cache resets, KV pressure that
preempts, custom block hashers, caching off) run through both engines step by step; every step's duration,
tokens, finished / started requests and counters, every KV event, and every request's final fields must be
equal. The virtual-clock driver is compared the same way, callbacks included.
"""

from __future__ import annotations

import random
from typing import Any, cast

import pytest
from _reference_engine import RefEngine

from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.kvcache import KVEvent
from kvgate.sim.types import SimRequest
from kvgate.sim.vclock import VirtualClock, VirtualReplica

CONFIGS: list[dict[str, Any]] = [
    {"profile": "tiny"},
    {"profile": "tiny", "max_loras": 2},
    {"profile": "tiny", "num_gpu_blocks": 200, "max_num_seqs": 8, "max_loras": 1},
    {"profile": "tiny", "enable_prefix_caching": False},
    {"profile": "tiny", "custom_hash": True, "block_size": 8, "num_gpu_blocks": 300},
    {"profile": "llama3-8b-h100", "num_gpu_blocks": 300, "max_num_batched_tokens": 512, "max_loras": 3},
    {"profile": "qwen3-32b-h100", "max_num_batched_tokens": 300, "num_gpu_blocks": 100},
]


def _custom_hash(parent: int | None, tokens: Any, lora: str | None) -> int:
    return hash((parent, tuple(tokens), lora)) & ((1 << 64) - 1)


def _ops(seed: int, loras: bool) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(900) for _ in range(rng.randrange(1, 300))] for _ in range(6)]
    ops: list[tuple[Any, ...]] = []
    t = 0.0
    for i in range(rng.randrange(20, 120)):
        t += rng.expovariate(200)
        prompt = rng.choice(prefixes)[: rng.randrange(0, 300)]
        prompt += [rng.randrange(900) for _ in range(rng.randrange(1, 200))]
        lora = rng.choice([None, None, "a", "b", "c"]) if loras else None
        ops.append(("add", t, f"r{i}", prompt, rng.randrange(1, 150), lora))
        if rng.random() < 0.1:
            ops.append(("abort", t + rng.random() * 0.05, f"r{rng.randrange(i + 1)}"))
        if rng.random() < 0.02:
            ops.append(("reset", t))
    ops.sort(key=lambda o: o[1])
    return ops


def _event(e: KVEvent) -> tuple[Any, ...]:
    return (type(e).__name__, *(repr(getattr(e, k)) for k in getattr(e, "__slots__", ())))


def _run(engine_cls: type, seed: int, cfg: dict[str, Any]) -> dict[str, Any]:
    kw = dict(cfg)
    if kw.pop("custom_hash", False):
        kw["block_hasher"] = _custom_hash
    events: list[list[tuple[Any, ...]]] = []
    eng = engine_cls(EngineConfig(**kw), kv_event_sink=lambda evs: events.append([_event(e) for e in evs]))
    reqs: dict[str, SimRequest] = {}
    log: list[Any] = []
    ops = _ops(seed, bool(cfg.get("max_loras")))
    now, oi = 0.0, 0
    while oi < len(ops) or eng.has_work():
        while oi < len(ops) and (ops[oi][1] <= now or not eng.has_work()):
            op = ops[oi]
            oi += 1
            if op[0] == "add":
                _, t, rid, prompt, max_tokens, lora = op
                reqs[rid] = r = SimRequest(rid, list(prompt), max_tokens=max_tokens, lora=lora)
                try:
                    eng.add_request(r, max(now, t))
                except ValueError as e:
                    log.append(("rejected", rid, str(e)))
            elif op[0] == "abort":
                log.append(("abort", op[2], eng.abort(op[2])))
            else:
                log.append(("reset", eng.reset_prefix_cache()))
            if not eng.has_work() and oi < len(ops):
                now = max(now, ops[oi][1])
        if not eng.has_work():
            continue
        res = eng.step(now)
        log.append(
            (
                res.duration,
                [(r.request_id, tok) for r, tok in res.tokens],
                [r.request_id for r in res.finished],
                [r.request_id for r in res.started],
                res.num_prefill_tokens,
                res.num_decode_tokens,
                res.num_preempted,
                eng.stats(),
            )
        )
        now += res.duration
    final = {
        rid: (
            r.output_token_ids,
            r.num_cached_tokens,
            r.first_token_time,
            r.finish_time,
            r.finish_reason,
            r.first_scheduled_time,
            r.num_preemptions,
            r.arrival_time,
        )
        for rid, r in reqs.items()
    }
    return {
        "log": log,
        "events": events,
        "final": final,
        "lora_loads": eng.lora_loads,
        "evictions": eng.pool.evictions,
        "preemptions": sum(r.num_preemptions for r in reqs.values()),
    }


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_engine_matches_the_reference_step_by_step(cfg: dict[str, Any]) -> None:
    stressed = 0
    for seed in range(4):
        want = _run(RefEngine, seed, cfg)
        got = _run(Engine, seed, cfg)
        for key in want:
            assert got[key] == want[key], f"seed {seed}: {key} differs"
        stressed += want["preemptions"] + want["evictions"]
    # The workloads must exercise the paths that matter (these configs all preempt or evict).
    assert stressed > 0


def _run_vclock(engine_cls: type, seed: int, cfg: dict[str, Any]) -> tuple[Any, ...]:
    rng = random.Random(seed)
    clock = VirtualClock()
    got: list[tuple[Any, ...]] = []
    reps = [
        VirtualReplica(
            clock,
            cast(Engine, engine_cls(EngineConfig(**cfg))),
            name=str(i),
            on_token=lambda r, tok, t: got.append(("t", r.request_id, tok, t)),
            on_first_token=lambda r, t: got.append(("f", r.request_id, t)),
            on_finished=lambda r, t: got.append(("d", r.request_id, t)),
            on_step=lambda rep, res: got.append(("s", rep.name, res.duration)),
        )
        for i in range(5)
    ]
    reqs = []
    t = 0.0
    for i in range(300):
        t += rng.expovariate(300)
        prompt = [rng.randrange(5)] * rng.randrange(0, 64)
        prompt += [rng.randrange(900) for _ in range(rng.randrange(1, 300))]
        r = SimRequest(f"q{i}", prompt, max_tokens=rng.randrange(1, 100))
        reqs.append(r)
        rep = reps[rng.randrange(len(reps))]
        clock.call_at(t, rep.submit, r)
        if rng.random() < 0.05:
            clock.call_at(t + rng.random() * 0.1, rep.abort, r.request_id)
    clock.run()
    final = [(r.output_token_ids, r.num_cached_tokens, r.first_token_time, r.finish_time) for r in reqs]
    return got, final, clock.now, clock.events_run


@pytest.mark.parametrize("blocks", [0, 150])
def test_virtual_replicas_match_the_reference(blocks: int) -> None:
    cfg: dict[str, Any] = {"profile": "tiny", "num_gpu_blocks": blocks}
    assert _run_vclock(Engine, 3, cfg) == _run_vclock(RefEngine, 3, cfg)
