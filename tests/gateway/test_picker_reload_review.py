"""Review s8-reload's findings on the live picker swap (B1 the implicit prefix scorer, B2 two reloads a
moment apart, R1 a dead old dispatcher, R4 the flow metric labels, R5 an apply that raises, N3 the log):
the reviewer's tests, each failing before its fix, and the fixes' own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import yaml

from gateway.conftest import until
from kvgate.config.gateway import parse_gateway_config
from kvgate.flowcontrol import dispatcher as fc_dispatcher
from kvgate.gateway.pools import build_pool
from kvgate.gateway.reload import ConfigReloader
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.types import InferenceRequest, NoCapacityError, SchedulingError


# --- B1 ------------------------------------------------------------------------------------------
def _b1_doc(weight: int, consumer: str) -> dict[str, Any]:
    plugins = [{"type": consumer}, {"type": "queue-scorer", "name": "q"}]
    refs = [{"pluginRef": consumer}, {"pluginRef": "q", "weight": weight}]
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [{
            "name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"],
            "endpointPickerConfig": {
                "plugins": plugins, "schedulingProfiles": [{"name": "default", "plugins": refs}],
            },
        }],
    }  # fmt: skip


@pytest.mark.parametrize("consumer", ["kvgate-cost-scorer", "prefix-cache-affinity-filter"])
def test_reloads_do_not_leave_the_old_pickers_implicit_prefix_scorer_on_the_store(tmp_path, consumer):
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_b1_doc(1, consumer)))
    cfg = parse_gateway_config(_b1_doc(1, consumer))
    pools = [build_pool(cfg.pools[0])]
    rl = ConfigReloader(str(f), cfg, pools, None)
    for w in range(2, 7):  # 5 reloads, each changing only the queue scorer's weight
        f.write_text(yaml.safe_dump(_b1_doc(w, consumer)))
        assert rl.reload()
    scorers = [
        getattr(fn, "__self__", None)
        for fn in pools[0].store.listeners
        if isinstance(getattr(fn, "__self__", None), PrefixCacheScorer)
    ]
    assert len(scorers) == 1, f"{len(scorers)} prefix scorers still listen to the store after 5 reloads"


# --- B2 (fixed by d1b9cc4 before this review was read; the reviewer's test kept) ----------------------
def _fc_doc(weight: int) -> dict[str, Any]:
    picker = {
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "queue-scorer", "weight": weight}]}
        ],
        "featureGates": ["flowControl"],
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
    }
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
        ],
    }


def test_a_second_reload_still_waits_for_the_first_reloads_old_queue(tmp_path):
    async def main() -> None:
        f = tmp_path / "gw.yaml"
        f.write_text(yaml.safe_dump(_fc_doc(1)))
        cfg = parse_gateway_config(_fc_doc(1))
        pool = build_pool(cfg.pools[0])
        (ep,) = pool.store.all()
        rl = ConfigReloader(str(f), cfg, [pool], None)
        d1 = pool.director
        ep.inflight.requests = 1  # full (maxConcurrency 1)
        b = asyncio.create_task(d1.admit(InferenceRequest("b", "m")))
        for _ in range(100):
            if d1.queued():
                break
            await asyncio.sleep(0)
        assert d1.queued() == 1
        f.write_text(yaml.safe_dump(_fc_doc(2)))
        assert rl.reload()
        d2 = pool.director
        assert d2 is not d1 and d2.predecessor is d1
        f.write_text(yaml.safe_dump(_fc_doc(3)))  # reload 2, D1 still draining, D2's queue empty
        assert rl.reload()
        d3 = pool.director
        assert d3 is not d2 and d1.queued() == 1
        ep.inflight.requests = 0  # room now; D1's dispatcher has not run yet (no await since)
        c = InferenceRequest("c", "m")
        try:
            assert d2.saturated(c), "control: D2 waits behind D1's queue"
            assert d3.saturated(c), "a request after reload 2 overtakes the one still queued on D1"
        finally:
            b.cancel()
            await asyncio.gather(b, return_exceptions=True)

    asyncio.run(main())


# --- R1 ------------------------------------------------------------------------------------------
def test_a_dead_old_dispatcher_does_not_hold_the_new_gate_saturated_past_its_ttl(tmp_path):
    now = [1000.0]

    async def main() -> None:
        f = tmp_path / "gw.yaml"
        f.write_text(yaml.safe_dump(_fc_doc(1)))
        cfg = parse_gateway_config(_fc_doc(1))
        pool = build_pool(cfg.pools[0], clock=lambda: now[0])
        (ep,) = pool.store.all()
        rl = ConfigReloader(str(f), cfg, [pool], None)
        d1 = pool.director
        ep.inflight.requests = 1  # full
        b = asyncio.create_task(d1.admit(InferenceRequest("b", "m")))
        for _ in range(100):
            if d1.queued():
                break
            await asyncio.sleep(0)
        assert d1.queued() == 1
        f.write_text(yaml.safe_dump(_fc_doc(2)))
        assert rl.reload()
        d2 = pool.director
        assert d2.predecessor is d1

        def broken(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("a detector bug")

        d1.detector.saturated = broken  # the old gate raises (a bug, a metric it cannot read)
        ep.inflight.requests = 0
        d1.flow.notify()
        task = d1.flow._task
        for _ in range(1000):
            if task is None or task.done():
                break
            await asyncio.sleep(0)
        now[0] += 31.0  # past the old queue's 30 s TTL
        d1.flow.notify()  # what the new Director's _notify does for its predecessors
        await asyncio.sleep(0.1)  # a few 20 ms rechecks (the task retries its gate: review s8-final-b F1)
        c = InferenceRequest("c", "m")
        try:
            assert not d2.saturated(c), (
                f"the pool is empty and the old queue's TTL has passed, yet the new gate is saturated "
                f"(old queue still {d1.queued()}): the pool is stalled for good"
            )
        finally:
            b.cancel()
            await asyncio.gather(b, return_exceptions=True)
            task.exception() if task.done() and not task.cancelled() else None

    asyncio.run(main())


async def _until(cond: Any, n: int = 1000) -> None:
    for _ in range(n):
        if cond():
            return
        await asyncio.sleep(0)


def _queued_one(tmp_path: Any) -> tuple[Any, Any, Any]:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_fc_doc(1)))
    cfg = parse_gateway_config(_fc_doc(1))
    pool = build_pool(cfg.pools[0])
    rl = ConfigReloader(str(f), cfg, [pool], None)
    return f, pool, rl


def test_a_gate_that_keeps_raising_answers_the_queued_requests_503_at_their_ttl(tmp_path, caplog):
    """Review s8-final-b F1: the gate is retried at every recheck (a one-off fault costs nothing:
    tests/flowcontrol/test_review_s8_final_b.py); a lasting one answers each queued request 503 at its TTL
    (expiry runs before the gate), never leaves it waiting; logged with the traceback once."""
    now = [1000.0]

    async def main() -> None:
        cfg = parse_gateway_config(_fc_doc(1))
        pool = build_pool(cfg.pools[0], clock=lambda: now[0])
        (ep,) = pool.store.all()
        d = pool.director
        ep.inflight.requests = 1
        b = asyncio.create_task(d.admit(InferenceRequest("b", "m")))
        await _until(lambda: d.queued() == 1)

        def broken(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("a detector bug")

        d.detector.saturated = broken
        ep.inflight.requests = 0
        d.flow.notify()
        await asyncio.sleep(0.1)  # a few 20 ms rechecks, each raising
        assert not b.done() and d.queued() == 1, "a raising gate answered the queue before its TTL"
        assert d.flow.gate_errors >= 2
        now[0] += 31.0  # past the 30 s TTL
        d.flow.notify()
        await asyncio.sleep(0.1)
        assert b.done(), "the queued client still waits past its TTL (nothing expires it)"
        with pytest.raises(NoCapacityError, match="TTL expired"):
            b.result()
        assert d.queued() == 0
        assert d.flow._task is not None and d.flow._task.done()

    with caplog.at_level(logging.ERROR, logger="kvgate.flowcontrol"):
        asyncio.run(main())
    lines = [r for r in caplog.records if "saturation gate raised" in r.getMessage()]
    assert lines and lines[0].exc_info is not None
    assert all(r.exc_info is None for r in lines[1:])
    assert len(lines) < 10, "logged at every 20 ms recheck"


def test_a_pick_that_raises_after_the_request_left_the_queue_answers_its_client(tmp_path):
    async def main() -> None:
        _f, pool, _rl = _queued_one(tmp_path)
        (ep,) = pool.store.all()
        d = pool.director
        ep.inflight.requests = 1
        b = asyncio.create_task(d.admit(InferenceRequest("b", "m")))
        await _until(lambda: d.queued() == 1)

        def broken(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("a scorer bug")

        d.flow.pick = broken
        ep.inflight.requests = 0
        d.flow.notify()
        await _until(b.done)
        try:
            assert b.done(), "the dequeued request's client hangs: its future is never resolved"
            err = b.exception()
            assert (
                type(err) is SchedulingError
                and err.status == 500
                and str(err) == fc_dispatcher.PICK_ERROR_MESSAGE
            )
            assert d.queued() == 0
        finally:
            b.cancel()
            await asyncio.gather(b, return_exceptions=True)

    asyncio.run(main())


# --- B1: the implicit scorer's index is carried ----------------------------------------------------


@pytest.mark.parametrize("consumer", ["kvgate-cost-scorer", "prefix-cache-affinity-filter"])
def test_a_consumers_implicit_prefix_index_is_kept_across_a_reload(tmp_path, consumer):
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_b1_doc(1, consumer)))
    cfg = parse_gateway_config(_b1_doc(1, consumer))
    pool = build_pool(cfg.pools[0])
    rl = ConfigReloader(str(f), cfg, [pool], None)
    old = pool.director.handle.plugins[consumer]._prefix
    assert isinstance(old, PrefixCacheScorer) and old.name.endswith("#implicit")
    f.write_text(yaml.safe_dump(_b1_doc(2, consumer)))
    assert rl.reload()
    new = pool.director.handle.plugins[consumer]._prefix
    assert new is not old and new.index is old.index, "the implicit scorer's learnt prefixes were dropped"


# --- R4 ------------------------------------------------------------------------------------------


def test_the_flow_metric_labels_are_one_set_across_reloads(tmp_path):
    f, pool, rl = _queued_one(tmp_path)
    d1 = pool.director
    f.write_text(yaml.safe_dump(_fc_doc(2)))
    assert rl.reload()
    assert pool.director is not d1
    assert pool.director.flow.ctl.metrics.labels is d1.flow.ctl.metrics.labels


# --- R5 ------------------------------------------------------------------------------------------


def _two_pools(weight: int) -> dict[str, Any]:
    def pool(name: str, port: int) -> dict[str, Any]:
        return {
            "name": name, "endpoints": [f"127.0.0.1:{port}"], "models": [name],
            "endpointPickerConfig": {
                "plugins": [{"type": "prefix-cache-scorer"}, {"type": "queue-scorer"}],
                "schedulingProfiles": [{"name": "default", "plugins": [
                    {"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "queue-scorer", "weight": weight},
                ]}],
            },
        }  # fmt: skip

    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool("p", 1), pool("q", 2)]}


def _prefix_listeners(pool: Any) -> list[Any]:
    return [
        fn.__self__
        for fn in pool.store.listeners
        if isinstance(getattr(fn, "__self__", None), PrefixCacheScorer)
    ]


def test_an_apply_that_raises_half_way_keeps_the_watch_and_drops_what_it_did_not_swap(
    tmp_path, monkeypatch, caplog
):
    async def main() -> None:
        f = tmp_path / "gw.yaml"
        f.write_text(yaml.safe_dump(_two_pools(1)))
        cfg = parse_gateway_config(_two_pools(1))
        pools = [build_pool(pc) for pc in cfg.pools]
        rl = ConfigReloader(str(f), cfg, pools, None)
        olds = [p.director for p in pools]
        real = ConfigReloader._swap

        def swap(self: ConfigReloader, s: Any) -> None:
            if s.pool.name == "q":
                raise RuntimeError("a bug in the swap")
            real(self, s)

        monkeypatch.setattr(ConfigReloader, "_swap", swap)
        f.write_text(yaml.safe_dump(_two_pools(2)))
        task = asyncio.create_task(rl.run())
        rl.trigger()
        # (its picker checks run on a thread first: a deadline, not a count of loop turns)
        await until(lambda: rl.failures > 0 or task.done(), 30.0, "the reload's end")
        try:
            assert not task.done(), "the config watch ended"
            assert rl.failures == 1
            assert pools[0].director is not olds[0] and pools[1].director is olds[1]
            # p: the new picker's scorer only; q: its old one (the unswapped new picker's was dropped)
            assert _prefix_listeners(pools[0]) == [pools[0].director.handle.plugins["prefix-cache-scorer"]]
            assert _prefix_listeners(pools[1]) == [olds[1].handle.plugins["prefix-cache-scorer"]]
            assert "unexpected error" in caplog.text and "a bug in the swap" in caplog.text
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="kvgate.gateway.reload"):
        asyncio.run(main())


# --- N3 ------------------------------------------------------------------------------------------


def test_the_swap_log_says_queued_requests_drain_aside_when_the_new_picker_has_no_flow_control(
    tmp_path, caplog
):
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_b1_doc(1, "kvgate-cost-scorer")))
    cfg = parse_gateway_config(_b1_doc(1, "kvgate-cost-scorer"))
    rl = ConfigReloader(str(f), cfg, [build_pool(cfg.pools[0])], None)
    f.write_text(yaml.safe_dump(_b1_doc(2, "kvgate-cost-scorer")))
    with caplog.at_level(logging.WARNING, logger="kvgate.gateway.reload"):
        assert rl.reload()
    assert "drain on the old picker" in caplog.text and "leave the old picker first" not in caplog.text
