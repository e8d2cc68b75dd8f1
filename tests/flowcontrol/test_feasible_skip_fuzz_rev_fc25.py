"""Review s25-rev-fc25 (moved from its tests): lockstep fuzz of ``slo-feasible``. Controller A runs as
shipped; B has ``Band.dead_at`` (the O(1) skip's cache) cleared before every pass, so it always rescans. Same
operations (enqueue with random SLOs/priorities/homes, TTL expiry, cancel, holds, failed picks, parks
and wakes); the dispatch order must be the same, nothing dispatched twice, nothing lost. No process is
started; time is injected."""

from __future__ import annotations

import random

import pytest

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

HOMES = ("10.0.0.1:8000", "10.0.0.2:8000")


def _ctl(fairness: str, headroom: bool) -> FlowController:
    cfg = {
        "fairnessPolicy": fairness, "orderingPolicy": "slo-feasible", "maxRequests": 100000,
        "defaultRequestTTL": "6s",
    }  # fmt: skip
    if headroom:
        cfg["fairShareHeadroom"] = 0.75
    return FlowController(parse_flow_control(cfg))


def _req(rid: str, flow: str, prio: int, slo: float, at: float, home: str | None) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=10, fairness_id=flow, priority=prio,
        headers={"x-slo-ttft-ms": str(max(1, round(slo * 1000)))}, arrival_time=at,
        subset=None if home is None else frozenset({home}),
    )  # fmt: skip


def _step(ctl, rng: random.Random, now: float, items: dict, sent_log: list, cache: bool) -> None:
    if not cache:
        for b in ctl.bands.values():
            b.dead_at = None
    cap = rng.randint(0, 3)
    full_homes = {h for h in HOMES if rng.random() < 0.5}
    hold_at = rng.random()
    fail_at = rng.random()
    sent: list = []

    def saturated(req: InferenceRequest) -> bool:
        if req.subset is not None and set(req.subset) & full_homes:
            return True
        return len(sent) >= cap

    for item in dispatch_ready(ctl, now, saturated):
        sent.append(item)
    for i, item in enumerate(sent):
        if hold_at < 0.2 and i == 0:
            ctl.hold(item, now, now + 0.2)
            sent_log.append(("hold", item.req.request_id, round(now, 6)))
        elif fail_at < 0.1 and i == len(sent) - 1:
            ctl.record(item, "shed", now)
            sent_log.append(("fail", item.req.request_id, round(now, 6)))
        else:
            ctl.record(item, "dispatched", now)
            sent_log.append(("sent", item.req.request_id, round(now, 6)))
    for h in HOMES:
        if h not in full_homes:
            ctl.freed(h)


def _run(seed: int, fairness: str, headroom: bool, cache: bool) -> tuple[list, dict]:
    ctl = _ctl(fairness, headroom)
    rng = random.Random(seed)
    items: dict = {}
    log: list = []
    now = 0.0
    n = 0
    for step in range(400):
        srng = random.Random(seed * 100003 + step)
        now += srng.choice((0.01, 0.05, 0.2, 0.5, 1.0))
        if srng.random() < 0.3:
            ctl.observe_service_ttft(srng.choice((0.05, 0.2, 0.5, 1.0)))
        for _ in range(srng.randint(0, 4)):
            n += 1
            flow = srng.choice("abcdef")
            prio = srng.choice((10, 0, -1))
            slo = srng.choice((0.05, 0.3, 1.0, 3.0))
            home = srng.choice((None, None, None, HOMES[0], HOMES[1]))
            at = now - srng.choice((0.0, 0.0, 0.5, 2.0))
            it = ctl.enqueue(_req(f"r{n}", flow, prio, slo, at, home), now)
            items[f"r{n}"] = it
        for it in ctl.expire(now):
            log.append(("ttl", it.req.request_id, round(now, 6)))
        if srng.random() < 0.1:
            live = sorted(k for k, v in items.items() if not v.done)
            if live:
                k = srng.choice(live)
                if ctl.cancel(items[k], now):
                    log.append(("cancel", k, round(now, 6)))
        _step(ctl, srng, now, items, log, cache)
    del rng
    end = now + 1000.0  # (everything still queued, held or parked reaches its TTL)
    for it in ctl.expire(end):
        log.append(("ttl", it.req.request_id, round(end, 6)))
    assert ctl.count == 0 and ctl.parked == 0, (ctl.count, ctl.parked)
    return log, items


@pytest.mark.parametrize("fairness", ["least-attained-service", "round-robin", "global-strict"])
@pytest.mark.parametrize("headroom", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_cached_skip_dispatches_as_a_full_rescan_and_loses_nothing(
    seed: int, fairness: str, headroom: bool
) -> None:
    log_a, items_a = _run(seed, fairness, headroom, cache=True)
    log_b, _ = _run(seed, fairness, headroom, cache=False)
    assert log_a == log_b
    finals: dict[str, str] = {}
    for kind, rid, _t in log_a:
        if kind in ("sent", "ttl", "cancel", "fail"):
            assert rid not in finals, (rid, kind, finals.get(rid), "left twice")
            finals[rid] = kind
        if kind == "hold":
            assert rid not in finals, (rid, "held after it left")
    assert set(finals) == set(items_a), set(items_a) ^ set(finals)  # (each request left exactly once)
