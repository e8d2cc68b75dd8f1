"""Who is calling, and how much they may: API keys on the data port and per-tenant rate limits.

API keys come from a file (one ``KEY TENANT`` per line, ``#`` comments) and/or an environment variable
(``KEY=TENANT,KEY2=TENANT2``). Only their SHA-256 digests are kept in memory; a request's
``Authorization: Bearer KEY`` (or ``x-api-key``) is hashed and looked up, so comparison time says nothing
about the key. The key's tenant becomes the request's fairness id (flow control's tenant), overriding any
client header: a tenant cannot pose as another.

Rate limits are token buckets per tenant (the API key's tenant, else the fairness-id header, else
``default-flow``): ``requestsPerMinute`` taken one per request at admission, ``tokensPerMinute`` charged
with the usage each response reports and checked at admission (a tenant in debt waits until refilled).
Refusals are 429 with ``Retry-After``. Buckets are kept for at most ``MAX_TENANTS`` tenants (least
recently seen forgotten), each keyed by its name up to ``BUCKET_NAME_MAX`` characters, a longer one by its
first 200 characters, a NUL and a 16-byte BLAKE2b digest of the whole in hex (233 characters;
``kvgate.boundedkey``, flow control's rule too), since the fairness header is client-chosen and of any
length (review s28-qa Q6).
Under ``--workers`` the buckets are the fleet's (``gateway.shared_tenants``, the same arithmetic on a
shared table, keyed by a digest).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kvgate.boundedkey import KEY_MAX, bounded_key

MAX_TENANTS = 65_536
# A tenant's bucket key (``kvgate.boundedkey``, as flow control's ``rate_key``): its name up to
# BUCKET_NAME_MAX characters (no digest per look-up for the usual short names), else its first 200
# characters, a NUL and a hex digest of the whole (233 characters).
BUCKET_NAME_MAX = KEY_MAX
bucket_key = bounded_key


class ApiKeyError(ValueError):
    pass


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def parse_keys(text: str, source: str, *, env: bool = False) -> dict[bytes, str]:
    keys: dict[bytes, str] = {}
    items = text.split(",") if env else text.splitlines()
    for n, raw in enumerate(items, 1):
        line = raw.split("#", 1)[0].strip() if not env else raw.strip()
        if not line:
            continue
        key, _, tenant = line.partition("=" if env else " ")
        key, tenant = key.strip(), tenant.strip()
        if not key or not tenant:
            raise ApiKeyError(f"{source}: entry {n} is not 'KEY{'=' if env else ' '}TENANT'")
        keys[_digest(key)] = tenant
    return keys


def load_keys(
    file: str | None, env_var: str | None, environ: Mapping[str, str] = os.environ
) -> dict[bytes, str]:
    keys: dict[bytes, str] = {}
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                keys.update(parse_keys(f.read(), file))
        except OSError as e:
            raise ApiKeyError(f"cannot read API keys file {file}: {e.strerror}") from e
    if env_var:
        value = environ.get(env_var)
        if value is None:
            raise ApiKeyError(f"environment variable {env_var} (API keys) is not set")
        keys.update(parse_keys(value, f"${env_var}", env=True))
    if not keys:
        raise ApiKeyError("API-key auth is on but no key was loaded")
    return keys


class ApiKeys:
    def __init__(self, digests: dict[bytes, str]) -> None:
        self._tenants = digests

    def tenant(self, headers: Mapping[str, str]) -> str | None:
        """The caller's tenant, or None when the request carries no valid key."""
        auth = headers.get("authorization")
        key: str | None = None
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                key = value.strip()
        if key is None:
            key = headers.get("x-api-key")
        if not key:
            return None
        return self._tenants.get(_digest(key))


@dataclass(slots=True)
class _Bucket:
    requests: float
    tokens: float
    at: float


class RateLimiter:
    def __init__(
        self, requests_per_minute: float, tokens_per_minute: float, clock: Callable[[], float]
    ) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # bucket_key(tenant) -> its bucket

    def _bucket(self, tenant: str) -> _Bucket:
        now = self.clock()
        key = bucket_key(tenant)
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(self.rpm, self.tpm, now)
            self._buckets[key] = b
            if len(self._buckets) > MAX_TENANTS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            dt = max(0.0, now - b.at)
            b.at = now
            if self.rpm:
                b.requests = min(self.rpm, b.requests + dt * self.rpm / 60)
            if self.tpm:
                b.tokens = min(self.tpm, b.tokens + dt * self.tpm / 60)
        return b

    def admit(self, tenant: str) -> float | None:
        """None when admitted; else seconds until the tenant may try again."""
        b = self._bucket(tenant)
        if self.rpm and b.requests < 1:
            return (1 - b.requests) * 60 / self.rpm
        if self.tpm and b.tokens <= 0:
            return (1 - b.tokens) * 60 / self.tpm
        if self.rpm:
            b.requests -= 1
        return None

    def charge(self, tenant: str, tokens: int) -> None:
        if self.tpm and tokens > 0:
            self._bucket(tenant).tokens -= tokens


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
