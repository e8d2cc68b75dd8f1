"""kvgate-cost-scorer coldWarmDelay (off by default), review rev-d35 F2-F4.

F2: a removed endpoint's warm rate is dropped (the prefix index forgets its blocks at the remove, so a
flapped endpoint no longer repels cold prefills for the next 30-60 s of decay). F3: a reload that keeps the
cost scorer's settings carries its learned seconds per prefill token and its rates (``reload._carry``).
F4: headOfLine and coldWarmDelay together price a cold prefill by the larger of the two rates, not their
sum (the warm picks are among the arrivals). Each fails on main 228581f3.
"""

from __future__ import annotations

from typing import Any

from kvgate.config.director import as_config, build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.gateway.reload import _carry
from kvgate.scheduling.framework import CycleState, Params
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.plugins.prefix_cache import CYCLE_KEY, PrefixMatch
from kvgate.scheduling.types import InferenceRequest

from .helpers import cycle, ep, handle

TEXT = "x" * 4 * 8000  # 8,000 prompt tokens


def _held(now: float, held: dict[str, int]) -> CycleState:
    c = cycle(TEXT, now=now)
    c.data[CYCLE_KEY] = PrefixMatch(hashes=[1, 2, 3, 4], matched=held, chunk=64)
    return c


def _policy(cost: dict[str, Any], lora_weight: int = 5) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "prefix-cache-scorer"},
            {"type": "kvgate-cost-scorer", "parameters": cost},
            {"type": "lora-affinity-scorer"},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "kvgate-cost-scorer", "weight": 10},
                    {"pluginRef": "lora-affinity-scorer", "weight": lora_weight},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
    }


def _cost(director: Any) -> KVGateCostScorer:
    return next(p for p in director.handle.plugins.values() if isinstance(p, KVGateCostScorer))


def test_a_removed_endpoint_forgets_its_warm_rate() -> None:
    store = EndpointStore([ep("a:1"), ep("b:1")])
    d = build_director(_policy({"coldWarmDelay": True}), store, clock=lambda: 0.0, seed=0)
    cost = _cost(d)
    cost.spt = 1e-4  # as learned
    warm = "customer A's context " * 1500
    for i in range(10):  # one customer's prompt: the first cold, the rest warm at its holder
        r = InferenceRequest(f"w{i}", "m", prompt_text=warm, max_tokens=10)
        res = d.pick(r)
        d.on_dispatched(r, res.primary)
        d.on_finished(r, res.primary, None, True)
    holder = res.primary.address
    other = ({"a:1", "b:1"} - {holder}).pop()
    assert cost.warm_rate(holder, 0.0) > 0
    store.remove(other)
    assert cost.warm_rate(holder, 0.0) > 0  # another endpoint's remove: kept
    store.add(ep(other))
    store.remove(holder)
    store.add(ep(holder))  # back: the prefix index holds nothing for it now
    assert cost.warm_rate(holder, 0.0) == 0.0
    a, b = cost.costs(cycle(TEXT, now=0.0), sorted(store.all(), key=lambda e: e.address))
    assert a == b  # a cold prefill: both idle, both empty, priced alike


def test_a_reload_with_the_same_settings_keeps_what_the_cost_scorer_learned() -> None:
    store = EndpointStore([ep("a:1"), ep("b:1")])
    on = {"coldWarmDelay": True, "headOfLine": True}
    old = build_director(_policy(on, 5), store, clock=lambda: 0.0, seed=0)
    o = _cost(old)
    for _ in range(8):
        o.on_picked(_held(0.0, {"a:1": 4}), ep("a:1"))  # warm picks at a:1
    o.spt = 1e-4
    # Only another plugin's weight changes: the cost scorer's spec is the same.
    new = build_director(_policy(on, 6), store, clock=lambda: 0.0, seed=0)
    _carry(old, new, None, None, (as_config(_policy(on, 5)), as_config(_policy(on, 6))))  # type: ignore[arg-type]
    n = _cost(new)
    assert n.spt == 1e-4
    assert n.warm_rate("a:1", 1.0) == o.warm_rate("a:1", 1.0) > 0
    assert n.arrival_rate("a:1", 1.0) == o.arrival_rate("a:1", 1.0) > 0
    assert n.costs(cycle(TEXT, now=1.0), [ep("a:1"), ep("b:1")]) == o.costs(
        cycle(TEXT, now=1.0), [ep("a:1"), ep("b:1")]
    )
    n.on_picked(_held(1.0, {"a:1": 4}), ep("a:1"))
    assert n.warm_rate("a:1", 1.0) > o.warm_rate("a:1", 1.0)  # copies: the old picker's stay its own
    # The cost scorer's own settings changed: it relearns (its rates may not mean the same).
    off = {"coldWarmDelay": True}
    other = build_director(_policy(off, 5), store, clock=lambda: 0.0, seed=0)
    _carry(old, other, None, None, (as_config(_policy(on, 5)), as_config(_policy(off, 5))))  # type: ignore[arg-type]
    assert _cost(other).spt == 0.0 and _cost(other).warm_rate("a:1", 1.0) == 0.0


def test_with_head_of_line_too_a_warm_arrival_is_charged_once() -> None:
    def trained(params: dict[str, Any]) -> KVGateCostScorer:
        s = KVGateCostScorer.create("k", Params(params, "p"), handle())
        for _ in range(8):
            s.on_picked(_held(0.0, {"a:1": 4}), ep("a:1"))  # warm picks at a:1
        for _ in range(8):
            s.on_picked(cycle(TEXT, now=0.0), ep("b:1"))  # cold picks at b:1
        s.spt = 1e-4
        return s

    both, hol, cwd = (
        trained({"coldWarmDelay": True, "headOfLine": True}),
        trained({"headOfLine": True}),
        trained({"coldWarmDelay": True}),
    )
    got = both.costs(cycle(TEXT, now=1.0), [ep("a:1"), ep("b:1")])
    # Every pick is an arrival, so the larger rate is headOfLine's: its costs, not the sum of both terms.
    assert got == hol.costs(cycle(TEXT, now=1.0), [ep("a:1"), ep("b:1")])
    warm_only = cwd.costs(cycle(TEXT, now=1.0), [ep("a:1"), ep("b:1")])
    assert warm_only[0] > warm_only[1]  # coldWarmDelay alone charges a:1 (a sum would show it)
