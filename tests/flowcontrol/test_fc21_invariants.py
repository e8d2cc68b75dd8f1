"""s21-fc review: fc21's per-address band counts (``_bands_at``/``_top_at``) and the Home indexes checked
against a walk after every operation of random runs (park via dispatch passes, freed, cancel, TTL expiry,
soft-pin give-up, preemption-style wake_first, wake_all, evict_all), with multi-address subsets and three
bands; fcfs and slo-feasible ordering (fixfc21, review s21-fc F3: a home's overdue heads kept apart per
flow). Pure, injected time."""

from __future__ import annotations

import contextlib
import random

import pytest

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest, ShedError

ADDRS = ["a:1", "b:1", "c:1", "d:1"]
SUBSETS = [frozenset({"a:1"}), frozenset({"a:1", "b:1"}), frozenset({"b:1", "c:1"}), frozenset({"d:1"})]


class World:
    def __init__(self) -> None:
        self.room = 0
        self.free = dict.fromkeys(ADDRS, 0)

    def saturated(self, r: InferenceRequest) -> bool:
        if r.subset is not None:
            return all(self.free[a] <= 0 for a in r.subset)
        return self.room <= 0

    def take(self, r: InferenceRequest) -> None:
        if r.subset is None:
            self.room -= 1
            return
        for a in sorted(r.subset):
            if self.free[a] > 0:
                self.free[a] -= 1
                return


def walk_counts(c: FlowController) -> tuple[dict[str, dict[int, int]], dict[str, int]]:
    bands: dict[str, dict[int, int]] = {}
    for key in c._parked:
        for addr in key[1]:
            d = bands.setdefault(addr, {})
            d[key[2]] = d.get(key[2], 0) + 1
    return bands, {a: max(d) for a, d in bands.items()}


def check(c: FlowController, worst: list[float]) -> None:
    bands, top = walk_counts(c)
    assert c._bands_at == bands, (c._bands_at, bands)
    assert c._top_at == top, (c._top_at, top)
    assert set(c._parked_at) == set(bands)
    for key, home in c._parked.items():
        assert home.items, f"an empty home kept: {key}"
        live = {e[1] for e in home.all if home._live(e)}
        assert live == set(home.items), "a parked head missing from its home's index"
        tiers = (home.flows, home.late, home.dead)
        per_flow = {e[1] for f in home.flows for t in tiers for e in t.get(f, [])
                    if home._live(e) and e[2].flow == f}  # fmt: skip
        assert per_flow == live, "a parked head missing from its flow's heaps (slo-feasible: or overdue ones)"
        assert set(home.late) <= set(home.flows) and set(home.dead) <= set(home.flows)
        for item, _, _ in home.items.values():
            assert item.parked == key and not item.done
        size = len(home.all) + sum(len(h) for h in home.flows.values()) + len(home.turns)
        size += sum(len(h) for h in home.late.values()) + sum(len(h) for h in home.dead.values())
        worst[0] = max(worst[0], size / (len(home.items) + 64))


@pytest.mark.parametrize("ordering", ["fcfs", "slo-feasible"])
@pytest.mark.parametrize("fairness", ["global-strict", "round-robin", "least-attained-service"])
@pytest.mark.parametrize("seed", range(40))
def test_counts_and_indexes_stay_exact_on_every_exit_path(seed: int, fairness: str, ordering: str) -> None:
    rnd = random.Random(seed * 7 + len(fairness))
    # (slo-feasible: a 10 ms default TTFT SLO, heads overdue within the 50 ms TTL: the homes' late heaps used)
    cfg = FlowControlConfig(ttl=0.05, fairness=fairness, ordering=ordering, default_ttft_slo=0.01)
    c = FlowController(cfg)
    w = World()
    now, items, worst, most = 0.0, [], [0.0], [0]
    for step in range(400):
        now += rnd.choice([1e-4, 1e-3, 5e-3])
        op = rnd.random()
        if op < 0.35:
            sub = rnd.choice([None, *SUBSETS])
            r = InferenceRequest(f"r{step}", "m", prompt_tokens=10, max_tokens=4,
                                 fairness_id=f"f{rnd.randrange(4)}", subset=sub,
                                 priority=rnd.choice([0, 5, 10]))  # fmt: skip
            r.subset_soft = sub is not None and rnd.random() < 0.3
            with contextlib.suppress(ShedError):
                items.append(c.enqueue(r, now))
        elif op < 0.55:
            for item in dispatch_ready(c, now, w.saturated):
                w.take(item.req)
        elif op < 0.7:
            a = rnd.choice(ADDRS)
            w.free[a] += 1
            c.freed(a)
        elif op < 0.75:
            w.room += 1
        elif op < 0.85 and items:
            c.cancel(rnd.choice(items), now)
        elif op < 0.9:
            c.expire(now)
            c.unpin_due(now)
        elif op < 0.95 and c._parked:
            c.wake_first(rnd.choice(list(c._parked)), now)
        elif op < 0.97:
            c.wake_all()
        elif op < 0.98:
            c.evict_all(now)
        check(c, worst)
        most[0] = max(most[0], len(c._parked))
    assert worst[0] < 4, worst
    assert most[0] > 0  # (the run parked heads)
