"""Session 29 (shape29): the tenant buckets' ``bucket_key`` and flow control's ``rate_key`` were two forms of
one rule (bytes of BLAKE2b vs a prefix and its hex); both are ``kvgate.boundedkey.bounded_key`` now.
Fails on 11cbef01 (no ``kvgate.boundedkey``; ``bucket_key`` gave 16 bytes)."""

from __future__ import annotations

from kvgate.boundedkey import KEPT, KEY_MAX, bounded_key
from kvgate.flowcontrol import controller
from kvgate.gateway import tenants


def test_tenant_buckets_and_flow_control_key_ids_by_the_one_rule() -> None:
    assert tenants.bucket_key is bounded_key and controller.rate_key is bounded_key
    assert tenants.BUCKET_NAME_MAX == controller.RATE_KEY_MAX == KEY_MAX


def test_a_short_id_is_its_own_key_and_a_long_one_a_bounded_key_of_its_own() -> None:
    short = "t" * KEY_MAX
    assert bounded_key(short) == short
    long = short + "t"
    key = bounded_key(long)
    assert key.startswith(long[:KEPT] + "\x00") and len(key) == KEPT + 1 + 32 < KEY_MAX
    assert bounded_key(long[:-1] + "u") != key
    assert bounded_key("x" * 70_000) != bounded_key("x" * 70_001)
    assert bounded_key(key) == key  # (a key is its own key: FleetShares' cache looks a flow up by it)
