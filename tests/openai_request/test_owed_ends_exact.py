"""``ModelLabels``' owed ends are exactly the requests in flight when a name retired (doors18; closing-s16
and -s17 "retired-name allowance approximate"): a name that leaves the reported set owes its label to the
requests held under it then, and before, the ends were only counted, so a *new* request ending before an
older one took one of them (labelled with the retired name) and the older one ended under ``other``. Now
each ``hold`` is numbered in its request's task and the retirement marks the last number: the doors hold,
label and drop a request in its handler task."""

from __future__ import annotations

import asyncio

import pytest

from kvgate.openai.labels import OTHER_MODEL, ModelLabels


async def test_a_new_request_ending_first_does_not_take_an_old_ones_end() -> None:
    reported = frozenset({"a"})
    labels = ModelLabels(["m"], reported=lambda: reported)
    old_started, retired, new_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ends: dict[str, str] = {}

    async def old() -> None:
        labels.hold("a")
        assert labels.label("a") == "a"
        old_started.set()
        await new_done.wait()
        ends["old"] = labels.label("a")  # (its end: owed, the name was a label when it started)
        labels.drop("a")

    async def new() -> None:
        await retired.wait()
        labels.hold("a")  # started after the name left the reported set
        ends["new"] = labels.label("a")
        labels.drop("a")
        new_done.set()

    tasks = [asyncio.create_task(old()), asyncio.create_task(new())]
    await old_started.wait()
    reported = frozenset()  # retired, the old request in flight
    labels.sweep()
    retired.set()
    await asyncio.gather(*tasks)
    # Before: {"new": "a", "old": "other"} (the new one took the only end owed).
    assert ends == {"new": OTHER_MODEL, "old": "a"}
    assert not labels._owed and not labels.inflight


async def test_two_old_requests_keep_the_name_to_their_ends_whatever_ends_between() -> None:
    reported = frozenset({"a"})
    labels = ModelLabels(["m"], reported=lambda: reported)
    go = asyncio.Event()
    ends: list[tuple[str, str]] = []

    async def request(name: str, wait: asyncio.Event | None) -> None:
        labels.hold("a")
        if wait is not None:
            await wait.wait()
        ends.append((name, labels.label("a")))
        labels.drop("a")

    olds = [asyncio.create_task(request(f"old{i}", go)) for i in range(2)]
    await asyncio.sleep(0)
    reported = frozenset()
    labels.sweep()
    for i in range(3):  # new ones come and go while the old ones wait
        await asyncio.create_task(request(f"new{i}", None))
    go.set()
    await asyncio.gather(*olds)
    assert sorted(ends) == [
        ("new0", "other"),
        ("new1", "other"),
        ("new2", "other"),
        ("old0", "a"),
        ("old1", "a"),
    ]
    assert not labels._owed


async def test_a_request_dropped_from_another_task_leaves_nothing_behind() -> None:
    """(``kvgate epp``'s idle sweeper ends a stream from its own task: that drop counts one owed end, as
    before, and the holding task's numbers go with the task.)"""
    import gc

    reported = frozenset({"a"})
    labels = ModelLabels(["m"], reported=lambda: reported)

    done = asyncio.Event()

    async def held() -> None:
        labels.hold("a")
        done.set()

    task = asyncio.create_task(held())
    await done.wait()  # (the task not awaited: the awaiting task would keep it referenced)
    await asyncio.sleep(0)  # (its end)
    assert task.done()
    reported = frozenset()
    labels.sweep()
    assert labels._owed == {"a": 1}
    labels.drop("a")  # (from this task: not the one that held it)
    assert not labels._owed and not labels.inflight
    del task
    gc.collect()
    assert len(labels._holds) == 0


async def test_nothing_owed_no_task_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Holds are numbered only while their name is owed: the steady state (no name retired with requests
    in flight) pays no task lookup per hold and drop (review s18-doors L1: numbering every hold made
    hold + label + drop ~6x dearer; 2 lookups per request before). Numbering still starts at a retirement."""
    import kvgate.openai.labels as labels_module

    looked: list[int] = []
    current = asyncio.current_task

    def counted() -> asyncio.Task[object] | None:
        looked.append(1)
        return current()

    monkeypatch.setattr(labels_module.asyncio, "current_task", counted)
    reported = frozenset({"a"})
    labels = ModelLabels(["m"], reported=lambda: reported)
    for name in ("a", "b"):
        labels.hold(name)
        labels.label(name)
        labels.drop(name)
    assert looked == [] and len(labels._holds) == 0
    labels.hold("a")  # (in flight when it retires: unnumbered, owed)
    reported = frozenset()
    labels.sweep()
    labels.hold("a")  # (after: numbered, this task's)
    assert looked and len(labels._holds) == 1
    labels.drop("a")
    labels.drop("a")
    assert not labels._owed and not labels.inflight and len(labels._holds) == 0
