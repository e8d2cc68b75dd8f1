"""s24-rev-fix24a F6 (L), a guard, not a failure: nothing tests the layout MARK itself. The fixer's test
(tests/gateway/test_shared_layout_rev_prev24.py) attaches a smaller segment, which a size-only check also
refuses: with ``attach``'s ``if mark != _LAYOUT`` replaced by ``if shm.size < want`` all 11 tests of
test_shared_layout_rev_prev24.py + test_shared_responses*.py pass. This one passes on 587274c0 and fails
under that mutation: a segment of this size whose mark is not this layout's (a same-size layout change,
what the mark is for) is refused."""

from __future__ import annotations

import uuid
from multiprocessing import shared_memory

import pytest

from kvgate.gateway import shared_responses as sr


def test_a_segment_of_the_same_size_without_the_mark_is_refused() -> None:
    workers = 2
    name = f"rf24a_{uuid.uuid4().hex[:10]}_rsp"
    shm = shared_memory.SharedMemory(name=name, create=True, size=sr.segment_size(workers))  # zeros: no mark
    try:
        with pytest.raises(ValueError):
            sr.SharedResponses.attach(name, workers, 0).close()
    finally:
        shm.close()
        shm.unlink()
