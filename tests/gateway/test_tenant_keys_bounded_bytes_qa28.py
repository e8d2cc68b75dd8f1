"""s28-qa Q6: the one-process rate limiter kept up to 65,536 tenant buckets keyed by the tenant's name as
sent (without API keys, the client's fairness header: up to the 64 KiB head each, ~3.9 GB in all). The
buckets are keyed by a fixed-size digest now, as the ``--workers`` table's entries already were; that
table's per-worker name cache and flow control's ``FleetShares`` key cache no longer keep long client ids
either. Each test fails on main e79adde8 (tens of MB held)."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Callable
from types import SimpleNamespace

from kvgate.flowcontrol.controller import rate_key
from kvgate.flowcontrol.fleet import FleetShares
from kvgate.gateway.shared_tenants import SharedTenants, segment_size
from kvgate.gateway.tenants import RateLimiter

NAMES = 300
NAME_CHARS = 100_000  # a client's x-gateway-inference-fairness-id, near the head's 64 KiB+ limit
BOUND = 3_000_000  # bytes: 300 digests and buckets are a few tens of KB


def _held_after(feed: Callable[[str], object]) -> int:
    """Traced bytes still held once ``feed`` took NAMES distinct long names (each dropped after)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(NAMES):
            name = f"{i:08d}" + "t" * NAME_CHARS
            feed(name)
            del name
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def test_one_process_tenant_buckets_are_bounded_in_bytes() -> None:
    t = [0.0]
    limiter = RateLimiter(600, 0, lambda: t[0])
    assert limiter.admit("warm") is None

    def feed(name: str) -> None:
        assert limiter.admit(name) is None

    held = _held_after(feed)
    assert held < BOUND, f"{NAMES} tenants with 100 KB names hold {held / 1e6:.1f} MB"


def test_a_long_tenant_name_still_has_its_own_bucket() -> None:
    t = [0.0]
    limiter = RateLimiter(2, 0, lambda: t[0])
    long = "a" * 70_000
    assert limiter.admit(long) is None
    assert limiter.admit(long) is None
    assert limiter.admit(long) is not None  # its 2 a minute spent
    assert limiter.admit(long[:-1] + "b") is None  # another name, another bucket
    assert limiter.admit("a") is None


def test_the_shared_tables_name_cache_keeps_no_long_names() -> None:
    buf = memoryview(bytearray(segment_size(1, 64)))
    table = SharedTenants(buf, 1, 0, threading.Lock(), slots=64, ways=8)
    table.bucket("warm", 0.0, 600, 0)
    held = _held_after(lambda name: table.bucket(name, 1.0, 600, 0))
    assert held < BOUND, f"the --workers tenant cache holds {held / 1e6:.1f} MB of names"


def test_fleet_shares_key_cache_keeps_no_long_flow_ids() -> None:
    shares = FleetShares(SimpleNamespace(fleet=SimpleNamespace(workers=2)))  # type: ignore[arg-type]
    shares.key("warm")
    held = _held_after(shares.key)
    assert held < BOUND, f"FleetShares' key cache holds {held / 1e6:.1f} MB of flow ids"
    long = "f" * 70_000
    assert shares.key(long) == shares.key(rate_key(long))  # the same flow's key, cached or not
