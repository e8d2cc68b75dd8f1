"""What a picker config's ``metrics-data-source`` asks of the scraper, and how it meets the scraper's own
settings. No HTTP here: the scheduling plugins build a ``ScrapeSource`` at config load and must not pull
in the HTTP client (aiohttp, the page client) to do it (review s28-rev-cfg28 F3).

Resolution (``resolve``), per setting, the source's where it sets one, else the scraper's own
(https for a pool's ``https://`` endpoints, verified against its ``caFile``, in both doors),
with two exceptions that keep a verified https scrape from being undone by a reference default:

- ``scheme: http`` where the scraper's own scheme is https (the reference chart's default config says
  ``http``): the pool's https wins, with its own verification; one WARNING names the key
  (review s28-rev-cfg28 F1). Refusing it would refuse the chart's default config for every https pool.
  Only on a port of the pool's own: a source that names another ``port`` names another listener (the
  engine's plain-http /metrics beside a TLS sidecar's inference port), and its ``http`` stands
  (review s28-rev-fixes28a F1). A source port that is any endpoint's of the pool (not only the one
  scraped) is that endpoint's TLS listener, https for every endpoint (review s28-rev-d28 F1).
- ``scheme: https`` with no TLS key where the scraper already scrapes https: its own verification stays
  (the pool's ``caFile``, else the system's CAs). Only where the scraper would scrape plain http does the
  reference's default apply (``insecureSkipVerify: true``) (review s28-rev-cfg28 F2). A TLS key given
  builds the source's own context, the reference's defaults for the keys left out.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Container
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScrapeSource:
    """What a config's ``metrics-data-source`` asks of the scraper; None: not set there, the scraper's own.
    ``tls``: the context its TLS keys build (``source_tls``; None: no TLS key given). ``origin``: where
    in the config it was declared (``plugins[i].parameters``), for messages naming its keys."""

    scheme: str | None = None
    path: str | None = None
    port: int | None = None  # the reference's port override: every endpoint scraped on this port
    tls: ssl.SSLContext | None = None
    interval: float | None = None
    origin: str = ""


def source_tls(insecure_skip_verify: bool, ca_cert_path: str = "") -> ssl.SSLContext:
    """The reference data source's server verification as a client context (its ``tlsClientConfig``):
    none with ``insecure_skip_verify``, else against ``ca_cert_path`` (the system's CAs when empty). A
    client certificate for mTLS is the caller's ``load_cert_chain``. An unreadable CA file raises OSError."""
    ctx = ssl.create_default_context(cafile=None if insecure_skip_verify else (ca_cert_path or None))
    if insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@functools.cache
def reference_default_tls() -> ssl.SSLContext:
    """The reference's https default with no TLS key (``insecureSkipVerify: true``); built once, shared."""
    return source_tls(True)


@dataclass(frozen=True, slots=True)
class Resolved:
    """One scrape's scheme, TLS context (None: the system's CAs for https) and path, and whether the
    source's ``scheme`` was overridden by the scraper's https (``resolve``)."""

    scheme: str
    tls: ssl.SSLContext | None
    path: str
    scheme_overridden: bool = False


def resolve(
    src: ScrapeSource | None,
    scheme: str,
    tls: ssl.SSLContext | None,
    path: str,
    port: int | None = None,
    pool_ports: Container[int] = (),
) -> Resolved:
    """``src`` against the scraper's own ``scheme``, ``tls`` and ``path`` (module docstring) for an
    endpoint whose own port is ``port`` (None: none in its address) in a pool whose endpoints' own ports
    are ``pool_ports`` (asked only where ``src`` names a port and says http for an https scraper)."""
    if src is None:
        return Resolved(scheme, tls, path)
    own_https = scheme == "https" or tls is not None  # the scraper scrapes https, verified, itself
    own_port = src.port is None or src.port == port
    if not own_port and src.scheme == "http" and scheme == "https":
        own_port = src.port in pool_ports
    if src.scheme == "http" and scheme == "https" and own_port:
        return Resolved(scheme, tls, src.path or path, scheme_overridden=True)
    out_scheme = src.scheme or scheme
    if src.tls is not None:
        out_tls: ssl.SSLContext | None = src.tls
    elif out_scheme == "https" and not own_https:
        out_tls = reference_default_tls()
    else:
        out_tls = tls
    return Resolved(out_scheme, out_tls, src.path or path)
