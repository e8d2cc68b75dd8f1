"""``gateway.shared_responses``: the documented bound holds, and a writer killed mid-write leaves nothing dead
(review s20-gw M1, L1; adapted from the review's tests). Real shared-memory segments, two worker views in one
process, time injected.

- M1: each worker's latest share of ``HOMES_MAX`` (``HOMES_MAX / N``) is found by every other worker. Before,
  one set of 8 per id in a region of the share's size overflowed long before the region was full (balls
  into bins): 198 of 25,000 ids (half a share) and 7,073 of 50,000 (a share) were no longer found.
- L1: an entry's sequence word left odd by a worker killed between its two writes (a restart continues the
  region) is readable again after the next write there; before, that write made it even while being written,
  then odd for good (skipped by every reader)."""

from __future__ import annotations

import pytest

from kvgate.gateway import shared_responses as sr
from kvgate.gateway.shared_responses import SharedResponses
from kvgate.openai.responses import HOMES_MAX

Views = tuple[SharedResponses, SharedResponses, SharedResponses]


def _missing(writer: SharedResponses, reader: SharedResponses, made: int, latest: int) -> int:
    """``writer`` makes ``made`` ids (1 ms apart); how many of its latest ``latest`` ``reader`` misses."""
    ids = [f"resp_{i:016x}" for i in range(made)]
    for i, rid in enumerate(ids):
        assert writer.remember(rid, "10.0.0.1:8000", now=i * 1e-3)
    return sum(1 for rid in ids[-latest:] if reader.find(rid, now=made * 1e-3) is None)


@pytest.mark.parametrize("made", [HOMES_MAX // 4, HOMES_MAX // 2])  # (half its share, its share)
def test_a_workers_latest_share_of_ids_is_all_found_by_another_worker(shared_views: Views, made: int) -> None:
    _, w0, w1 = shared_views
    missing = _missing(w0, w1, made, made)
    assert missing == 0, f"{missing} of the latest {made} ids one worker made are not found by the other"


def test_the_latest_share_stays_found_as_older_ids_are_displaced(shared_views: Views) -> None:
    """Three shares made (the region full, the oldest displaced): the latest share is still all found."""
    _, w0, w1 = shared_views
    share = HOMES_MAX // 2
    missing = _missing(w0, w1, 3 * share, share)
    assert missing == 0, f"{missing} of the latest {share} ids (of {3 * share} made) are not found"


def test_an_entry_left_odd_by_a_killed_writer_is_readable_again_after_the_next_write(
    shared_views: Views,
) -> None:
    _, w0, w1 = shared_views
    key = sr.response_key("resp_after_crash")
    base = w0._set_base(0, key)
    w0._words[base + sr._SEQ] = 1  # (the predecessor died mid-write of an empty entry: odd, key 0)
    assert w0.remember("resp_after_crash", "10.0.0.1:8000", now=100.0)
    assert w0._words[base + sr._KEY] == key  # (it took that entry)
    assert w1.find("resp_after_crash", now=101.0) == ("10.0.0.1:8000", None)
    # remember_models too: a word left odd there is even again after it.
    w0._words[base + sr._SEQ] |= 1
    assert w0.remember_models("resp_after_crash", ("sent", "client"))
    assert w1.find("resp_after_crash", now=101.0) == ("10.0.0.1:8000", ("sent", "client"))
