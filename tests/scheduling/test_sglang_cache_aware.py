"""SGLang cache_aware reproduced: radix tree, thresholds, balance override, eviction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.config.director import build_director
from kvgate.scheduling.plugins.sglang_cache_aware import RadixTree
from kvgate.scheduling.types import InferenceRequest

from .helpers import fleet


def test_tree_match_and_split() -> None:
    t = RadixTree()
    t.insert("hello world", "a", 1.0)
    t.insert("hello there", "b", 2.0)
    assert t.match("hello world!") == (11, {"a": 1.0})
    n, tenants = t.match("hello th")
    assert n == 8 and set(tenants) == {"b"}
    n, tenants = t.match("help")
    assert n == 3 and set(tenants) == {"a", "b"}
    assert t.size == {"a": 11, "b": 11 - 6 + 6}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.text("ab", max_size=8), st.sampled_from("xyz")), max_size=20),
    st.text("ab", max_size=8),
)
def test_match_is_longest_common_prefix(ops: list[tuple[str, str]], query: str) -> None:
    t = RadixTree()
    for i, (s, tenant) in enumerate(ops):
        t.insert(s, tenant, float(i))
    best = 0
    for s, _ in ops:
        k = 0
        while k < min(len(s), len(query)) and s[k] == query[k]:
            k += 1
        best = max(best, k)
    assert t.match(query)[0] == best
    for tenant in "xyz":  # size = characters of the union of that tenant's strings' tree paths
        paths = {s[:k] for s, tn in ops if tn == tenant for k in range(1, len(s) + 1)}
        assert t.size.get(tenant, 0) == len(paths)


def test_eviction_keeps_recent() -> None:
    t = RadixTree()
    t.insert("aaaa", "x", 1.0)
    t.insert("bbbb", "x", 2.0)
    t.insert("cccc", "x", 3.0)
    t.evict("x", 8)
    assert t.size["x"] == 8 and t.match("aaaa")[0] == 0 and t.match("cccc")[0] == 4


def _req(i: int, text: str) -> InferenceRequest:
    return InferenceRequest(f"r{i}", "m", prompt_text=text)


def test_policy_follows_cache_then_balances() -> None:
    store = fleet(2)
    d = build_director("sglang-cache-aware", store, clock=lambda: 0.0, seed=0)
    first = d.pick(_req(0, "shared system prompt " * 10 + "q0")).primary
    for i in range(1, 60):
        r = _req(i, "shared system prompt " * 10 + f"q{i}")
        res = d.pick(r)
        d.on_dispatched(r, res.primary)
    # Sticky until (max - min) > 64 and max > 1.5 min: 59 in flight all on the holder.
    assert first.inflight.requests == 59
    for i in range(60, 80):
        r = _req(i, "shared system prompt " * 10 + f"q{i}")
        d.on_dispatched(r, d.pick(r).primary)
    other = next(e for e in store.all() if e is not first)
    # 6 more reach 65 (diff 65 > 64), then the balance rule and the cache alternate: 7 each.
    assert first.inflight.requests == 72 and other.inflight.requests == 7


def test_miss_goes_to_smallest_tree() -> None:
    store = fleet(2)
    d = build_director("sglang-cache-aware", store, clock=lambda: 0.0, seed=0)
    a = d.pick(_req(0, "x" * 100)).primary
    b = d.pick(_req(1, "y" * 10)).primary
    assert a is not b
    assert d.pick(_req(2, "z" * 10)).primary is b  # b's tree (10 chars) is smaller than a's (100)
