"""Review s25-rev-fixfc25: an oracle fuzz of ``slo-feasible`` with aging inside a flow (its
test_rev_fixfc25_oracle.py, adapted to fixfc25b's order, F1: an aged request goes before its flow's other
overdue ones, never before a fresh one). p90 held constant (``service_ttft`` set), so which entries sit
in ``heap``/``late``/``dead`` is a function of the time alone: a live request's class at ``now`` (reach =
now + p90) is 0 fresh (deadline >= reach; key: deadline), 1 aged (deadline < now, aging time <= now; key:
aging time), 2 overdue (now <= deadline < reach), 3 dead (deadline < now < aging time; key: aging time).
Checked at every dispatch: the request sent is its flow's least (class, key, seq) among its flow's
queued requests (not held, not parked); global-strict without headroom: the least over all bands by
(class == 3, -band, class, key, seq); any fairness: a class-3 request goes only when no queued request
of any band is of class < 3. After every step: each queued request in exactly one of its flow's
heap/late/dead once (none twice, none missing), counts right; at the end every request left once.
No process is started; time is injected. Fails on main 29f4ddf8's src (aged before fresh)."""

from __future__ import annotations

import random

import pytest

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

HOMES = ("10.0.0.1:8000", "10.0.0.2:8000")


def _req(rid, flow, prio, slo, at, home):
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=10, fairness_id=flow, priority=prio,
        headers={"x-slo-ttft-ms": str(max(1, round(slo * 1000)))}, arrival_time=at,
        subset=None if home is None else frozenset({home}),
    )  # fmt: skip


def _cls(it, now, reach):
    if it.slo_deadline < now:
        return (1, it.ages_at, it.seq) if it.ages_at <= now else (3, it.ages_at, it.seq)
    if it.slo_deadline >= reach:
        return (0, it.slo_deadline, it.seq)
    return (2, it.slo_deadline, it.seq)


def _aged_tops(q, now, reach):
    """Each flow's first past its deadline by aging time (``FlowQueue.dead``'s top), when aged."""
    tops = {}
    for x in q:
        if x.slo_deadline < now:
            k = (x.priority, x.flow)
            if k not in tops or (x.ages_at, x.seq) < (tops[k].ages_at, tops[k].seq):
                tops[k] = x
    return [x for x in tops.values() if _cls(x, now, reach)[0] == 1]


def _swap_slot(it, q, now, reach):
    """fc26b: ``it`` given in the slot of an aged head of a higher band at or below the default that
    expires later (``FlowController._sooner_aged``): that band (the highest such with no live request
    above it), else None."""
    if it not in _aged_tops(q, now, reach):
        return None
    for p in sorted({x.priority for x in q if it.priority < x.priority <= 0}, reverse=True):
        if any(x.priority > p and _cls(x, now, reach)[0] != 3 for x in q):
            continue
        if any(x.priority == p and _cls(x, now, reach)[0] == 1 and x.deadline > it.deadline for x in q):
            return p
    return None


def _queued(items):
    return [it for it in items.values() if not it.done and it.held_until is None and it.parked is None]


def _check_structure(ctl, items):
    for prio, band in ctl.bands.items():
        seen = {}
        for flow, q in band.flows.items():
            for h in (q.heap, q.late, q.dead):
                for e in h:
                    it = e[2]
                    if not it.done:
                        assert it.seq not in seen, ("twice in its flow queue", it.req.request_id)
                        seen[it.seq] = it
                        assert it.flow == flow
        want = {it.seq for it in _queued(items) if it.priority == prio}
        assert set(seen) == want, ("flow queues vs queued", prio, set(seen) ^ want)
        n = sum(1 for it in items.values() if not it.done and it.priority == prio)
        assert band.count == n, (prio, band.count, n)


def _run(seed, fairness, headroom, homes):
    cfg = {"fairnessPolicy": fairness, "orderingPolicy": "slo-feasible", "maxRequests": 100000,
           "defaultRequestTTL": "6s"}  # fmt: skip
    if headroom:
        cfg["fairShareHeadroom"] = 0.75
    ctl = FlowController(parse_flow_control(cfg))
    rng = random.Random(seed)
    ctl.service_ttft = rng.choice((0.0, 0.2, 0.5, 1.0))
    items, log, now, n, aged_sent = {}, [], 0.0, 0, 0
    # fc26b: the slots owed, kept here (not read from the controller, review s26-rev-fc26b F5): a band whose
    # aged request was sent in a higher band's aged head's slot is owed one, given back once; at most as many
    # as it has queued (F2: capped whenever one of its requests leaves other than by the swap itself).
    owed: dict[int, int] = {}

    def owe(prio, delta=0):
        left = min(
            owed.get(prio, 0) + delta, sum(1 for x in items.values() if not x.done and x.priority == prio)
        )
        if left > 0:
            owed[prio] = left
        else:
            owed.pop(prio, None)

    for _step in range(400):
        now += rng.choice((0.01, 0.05, 0.2, 0.5, 1.0))
        for _ in range(rng.randint(0, 4)):
            n += 1
            home = rng.choice((None, None, None, *HOMES)) if homes else None
            at = now - rng.choice((0.0, 0.0, 0.5, 2.0))
            slo = rng.choice((0.05, 0.3, 1.0, 3.0))
            r = _req(f"r{n}", rng.choice("abcd"), rng.choice((10, 0, -1)), slo, at, home)
            items[f"r{n}"] = ctl.enqueue(r, now)
        for it in ctl.expire(now):
            log.append(("ttl", it.req.request_id))
            owe(it.priority)
        if rng.random() < 0.1:
            live = sorted(k for k, v in items.items() if not v.done)
            if live:
                k = rng.choice(live)
                if ctl.cancel(items[k], now):
                    log.append(("cancel", k))
                    owe(items[k].priority)
        cap = rng.randint(0, 3)
        full = {h for h in HOMES if rng.random() < 0.5}
        sent = []

        def saturated(req, full=full, sent=sent, cap=cap):
            if req.subset is not None and set(req.subset) & full:
                return True
            return len(sent) >= cap

        reach = now + ctl.service_ttft
        for it in dispatch_ready(ctl, now, saturated):
            q = [x for x in _queued(items) if x is not it] + [it]
            mine = _cls(it, now, reach)
            swap = _swap_slot(it, q, now, reach)
            best_flow = min(_cls(x, now, reach) for x in q if x.flow == it.flow and x.priority == it.priority)
            assert mine == best_flow or swap is not None, (
                "not its flow's first",
                it.req.request_id,
                mine,
                now,
            )
            repaid = False
            if mine[0] == 3:
                assert all(_cls(x, now, reach)[0] == 3 for x in q), ("dead sent before a live one", now)
            else:
                top = it.priority if swap is None else swap
                higher = [x for x in q if x.priority > top and _cls(x, now, reach)[0] != 3]
                # fc26b: a band owed slots (its aged requests took higher aged heads') gets one back for a
                # request that can still make its SLO: only in the slot of a higher aged head at or below
                # the default band, with nothing above that could still make its own
                repaid = bool(higher) and mine[0] in (0, 2) and owed.get(it.priority, 0) > 0
                if repaid:
                    aged = [x for x in higher if _cls(x, now, reach)[0] == 1]
                    assert aged and max(x.priority for x in aged) <= 0, ("repaid outside an aged slot", now)
                    slot = max(x.priority for x in aged)
                    assert not [x for x in higher if x.priority > slot], ("repaid under a live head", now)
                else:
                    assert not higher, ("higher band's live head waits", it.req.request_id, now)
            if fairness == "global-strict" and not headroom:

                def k(x, now=now, reach=reach):
                    c = _cls(x, now, reach)
                    return (c[0] == 3, -x.priority, *c)

                want = min(q, key=k)
                if _cls(want, now, reach)[0] == 1 and want.priority <= 0:  # (fc26b: a sooner lower aged one)
                    lower = [y for y in _aged_tops(q, now, reach) if y.priority < want.priority]
                    y = min(lower, key=lambda y: y.deadline, default=None)
                    if y is not None and y.deadline < want.deadline:
                        want = y
                if repaid:  # (the owed band's own global-strict first)
                    assert k(it) == min(k(x) for x in q if x.priority == it.priority), (
                        "not its band's first",
                        now,
                    )
                elif want.priority == it.priority and mine[0] == 1 and swap is not None:  # (ties on expiry)
                    assert it.deadline == want.deadline, ("not the soonest aged", it.req.request_id, now)
                else:
                    assert k(it) == k(want), ("not global-strict's first", it.req.request_id, now)
            owe(it.priority, -1 if repaid else 1 if swap is not None and mine[0] == 1 else 0)
            aged_sent += mine[0] == 1
            sent.append(it)
        for i, it in enumerate(sent):
            if i == 0 and rng.random() < 0.15:
                ctl.hold(it, now, now + 0.2)
            elif i == len(sent) - 1 and rng.random() < 0.1:
                ctl.record(it, "shed", now)
                log.append(("fail", it.req.request_id))
            else:
                ctl.record(it, "dispatched", now)
                log.append(("sent", it.req.request_id))
        for h in HOMES:
            if h not in full:
                ctl.freed(h)
        ctl.put_back()
        _check_structure(ctl, items)
    for it in ctl.expire(now + 1000.0):
        log.append(("ttl", it.req.request_id))
    assert ctl.count == 0 and ctl.parked == 0
    finals = {}
    for kind, rid in log:
        assert rid not in finals, ("left twice", rid)
        finals[rid] = kind
    assert set(finals) == set(items)
    return aged_sent


@pytest.mark.parametrize("fairness", ["global-strict", "round-robin", "least-attained-service"])
@pytest.mark.parametrize("headroom", [False, True])
@pytest.mark.parametrize("homes", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_oracle_order_and_nothing_lost(seed, fairness, headroom, homes):
    aged = _run(seed, fairness, headroom, homes)
    assert aged > 0  # (the fuzz reaches aging times)
