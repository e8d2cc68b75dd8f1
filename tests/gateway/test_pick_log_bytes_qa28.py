"""s28-qa Q5: ``/debug/picks`` (``proxy.PickLog``) kept the last 1,024 explanations whatever their size
(~126 KB each at 1,000 endpoints, and any client asks for one with ``x-kvgate-explain: 1``). It is bounded
by bytes too now (``PICK_LOG_BYTES``, 16 MiB; the oldest dropped first). The first test fails on main
19fe7fe1 (1,100 x 64 KB: ~67 MB held)."""

from __future__ import annotations

import gc
import tracemalloc

from kvgate.gateway.proxy import PICK_LOG_BYTES, PickLog


def _doc(i: int, size: int) -> bytes:
    return b"{" + b"x" * size + str(i).encode() + b"}"


def test_the_pick_log_is_bounded_in_bytes() -> None:
    log = PickLog()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(1100):
            log.put(f"rid-{i}", _doc(i, 65_536))
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < PICK_LOG_BYTES + 8_000_000, f"the pick log holds {held / 1e6:.0f} MB of explanations"
    assert log.get("rid-1099") == _doc(1099, 65_536)  # the newest kept, the oldest gone
    assert log.get("rid-0") is None


def test_oldest_out_first_by_bytes_and_by_count() -> None:
    log = PickLog(capacity=3, max_bytes=100)
    assert log.put("a", b"a" * 40) and log.put("b", b"b" * 40)
    assert log.put("c", b"c" * 40)  # 120 bytes: a goes
    assert [log.get(k) is not None for k in "abc"] == [False, True, True]
    assert log.put("b", b"b" * 10)  # the same id again: now the newest, its old bytes gone with it
    assert log.put("d", b"d" * 10) and log.put("e", b"e" * 10)  # 4 by count: c (the oldest) goes
    assert [log.get(k) is not None for k in "bcde"] == [True, False, True, True]
    assert log._bytes == 30


def test_an_explanation_over_the_byte_bound_is_not_kept() -> None:
    log = PickLog(max_bytes=100)
    assert log.put("small", b"s" * 50)
    assert not log.put("huge", b"h" * 101)
    assert log.get("huge") is None
    assert log.get("small") == b"s" * 50  # nothing pushed out for it
