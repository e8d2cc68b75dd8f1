"""rev-c28 F5: short tenant names key their buckets as they are; only names past ``BUCKET_NAME_MAX``
characters are digested (as flow control's ``rate_key``). 19fe7fe1 digested every name with BLAKE2b on
every admission and every token charge (~1.1 us a look-up vs ~60 ns). Fails on ac2504c1 (200 digests).
"""

from __future__ import annotations

import hashlib

from kvgate.gateway import tenants


def test_short_tenant_names_are_not_digested_per_request(monkeypatch) -> None:
    calls = []
    real = hashlib.blake2b

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tenants.hashlib, "blake2b", counting)
    rl = tenants.RateLimiter(600.0, 100_000.0, clock=lambda: 0.0)
    for _ in range(100):
        assert rl.admit("team-a") is None
        rl.charge("team-a", 10)
    assert len(calls) <= 1, f"{len(calls)} BLAKE2b digests for 200 bucket look-ups of one short name"


def test_bucket_keys_short_names_as_they_are_and_long_ones_by_a_fixed_size_digest() -> None:
    short = "t" * tenants.BUCKET_NAME_MAX
    assert tenants.bucket_key(short) == short
    long = short + "t"
    key = tenants.bucket_key(long)
    assert isinstance(key, str) and len(key) < tenants.BUCKET_NAME_MAX  # (fixed-size: kvgate.boundedkey)
    assert tenants.bucket_key(long[:-1] + "u") != key
