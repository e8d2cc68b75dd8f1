"""``kvgate.weakmembers.members`` and the /metrics collectors that read weak sets with it: a member's
removal by a weakref callback on another thread can land inside a scrape's iteration of the set (the
callback checked "is it being iterated?" just before the iteration began). ``list(weakset)`` then raises
"Set changed size during iteration" and the scrape fails; ``members`` copies again."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kvgate.weakmembers import members


class _Member:
    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 3  # (a prefix index's entries)
        self.error = None  # (a reflector's last error)

    def age(self) -> float:  # (a reflector's)
        return 1.0

    def gauges(self, now: dict[Any, list[int]]) -> None:  # (a flow's labels)
        pass

    def all(self) -> list[Any]:  # (an endpoint store's)
        return []


class _RacedWeakSet(weakref.WeakSet):  # type: ignore[type-arg]
    """A weak set whose first iteration meets a removal from "another thread": one member's weak reference
    leaves the underlying set after the first member was yielded, as a racing callback's discard does."""

    def __init__(self, *items: Any) -> None:
        super().__init__(items)
        self.victim = items[-1]
        self.raced = False

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            if not self.raced:
                self.raced = True
                self.data.discard(weakref.ref(self.victim))  # (refs to one live object compare equal)
            yield item


def test_list_of_a_raced_weak_set_fails_and_members_copies_again() -> None:
    a, b, c = _Member("a"), _Member("b"), _Member("c")
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        list(_RacedWeakSet(a, b, c))  # (the failure the collectors met)
    raced = _RacedWeakSet(a, b, c)
    assert sorted(m.name for m in members(raced)) == ["a", "b"]  # c's removal landed; the copy is whole


def test_members_of_a_plain_weak_set_are_its_live_members() -> None:
    a, b = _Member("a"), _Member("b")
    ws: weakref.WeakSet[_Member] = weakref.WeakSet([a, b])
    del b
    assert [m.name for m in members(ws)] == ["a"]


@pytest.mark.parametrize(
    ("module", "attr", "family"),
    [
        ("kvgate.flowcontrol.metrics", "_QUEUES", "inference_extension_flow_control_queue_size"),
        ("kvgate.flowcontrol.metrics", "_SATURATIONS", "inference_extension_flow_control_pool_saturation"),
        ("kvgate.scheduling.metrics", "_PREFIX_INDEXES", "inference_extension_prefix_indexer_size"),
    ],
)
def test_a_scrape_meeting_a_raced_removal_does_not_fail(
    monkeypatch: pytest.MonkeyPatch, module: str, attr: str, family: str
) -> None:
    mod = pytest.importorskip(module)
    keep = [_Member(f"m{i}") for i in range(3)]
    if attr == "_SATURATIONS":
        for i, m in enumerate(keep):
            m.pool, m.order = f"pool-{i}", i  # type: ignore[attr-defined]
            m.saturation = lambda: 0.5  # type: ignore[attr-defined]
    monkeypatch.setattr(mod, attr, _RacedWeakSet(*keep))
    names = {m.name for m in REGISTRY.collect()}  # (raised "Set changed size during iteration" before)
    assert family in names


def test_the_staleness_gauge_meeting_a_raced_removal_does_not_fail() -> None:
    from kvgate.k8s import staleness

    keep = [_Member(f"reflector-{i}") for i in range(3)]
    families = list(staleness._AgeCollector(_RacedWeakSet(*keep)).collect())  # type: ignore[arg-type]
    assert {s.labels["name"] for s in families[0].samples} == {"reflector-0", "reflector-1"}


def test_trimming_pick_series_meeting_a_raced_removal_does_not_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvgate.scheduling import metrics

    keep = [_Member(f"store-{i}") for i in range(3)]
    monkeypatch.setattr(metrics, "_PICK_STORES", _RacedWeakSet(*keep))
    monkeypatch.setattr(metrics.PICKS, "counts", {"10.0.0.9:8000": 1})
    metrics.trim_picks()  # (raised before)
    assert metrics.PICKS.counts == {}  # no store holds the address: its series goes


def test_a_shared_precise_index_holders_check_meeting_a_raced_removal_does_not_fail() -> None:
    # (a reload's picker check asks ``holds`` on its thread: review s34-rev-a34 F6)
    from kvgate.scheduling.plugins import precise_prefix as pp

    keep = [_Member(f"owner-{i}") for i in range(3)]
    shared = pp.SharedIndex(pp.BlockIndex(), None, holders=_RacedWeakSet(*keep))  # type: ignore[arg-type]
    claims = pp.IndexClaims(leaving=keep)  # (every holder leaves: the check reads them all)
    assert not shared.holds(claims)  # (raised "Set changed size during iteration" before)
