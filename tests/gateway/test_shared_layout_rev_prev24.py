"""s24-rev-prev24 F7 (L): the fleet's Responses table grew a word per entry (``_E`` 12 -> 13,
gateway/shared_responses.py:65) with no layout check: ``SharedResponses.attach`` maps whatever segment has
the name and slices it to this code's ``segment_size`` (a memoryview slice past the end silently
shortens). A worker spawned (``spawn``: code read from disk again) after the package was upgraded in place
under a running supervisor attaches the old, smaller segment with the new layout: its entries straddle the
old ones of the other workers, and the last worker's region runs off the end (IndexError on its writes).
The test makes a segment of the old size (the old layout's ``_E``) and attaches this tree's view: it
should refuse (a clear error at start-up) rather than run."""

from __future__ import annotations

import uuid

import pytest

from kvgate.gateway import shared_responses as sr


def test_attach_refuses_a_segment_of_another_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = 2
    with monkeypatch.context() as m:
        m.setattr(sr, "_E", 12)  # the layout before f42b389b's parents (2d2f17e0)
        old_size = sr.segment_size(workers)
    assert old_size < sr.segment_size(workers)
    name = f"rp24_{uuid.uuid4().hex[:10]}_rsp"
    owner = sr.SharedResponses.create(workers, name)  # (made with this tree's size, then ...)
    owner.close()
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=name, create=True, size=old_size)  # (... the old one)
    try:
        try:
            view = sr.SharedResponses.attach(name, workers, workers - 1)
        except (ValueError, RuntimeError):
            return  # refused: what it should do
        err = None
        try:  # attached anyway: the last worker's region runs past the segment's end
            for i in range(sr.slots_per_worker(workers)):
                view.remember(f"resp_{i}", "10.0.0.1:8000", 1.0)
        except IndexError as e:
            err = e
        view.close()
        pytest.fail(f"attached a segment of another layout ({old_size} bytes); its writes: {err!r}")
    finally:
        shm.close()
        shm.unlink()
