"""One health model for both front doors: which endpoints may be picked at all.

An endpoint is a candidate only while all of these hold:
- it is not ejected (``Endpoint.healthy``: the gateway ejects after failed requests, see
  ``kvgate.gateway.health``; the EPP sees no requests fail, Envoy does);
- its last ``scrape_failures`` scrapes did not all fail (``Endpoint.scrape_failures``, counted by the
  scraper: a dead server's port refuses scrapes long before anything else notices);
- its metrics are known and younger than ``metrics_staleness_s``.

"Unknown is not zero load": an endpoint whose metrics are missing or old looks idle to every load-aware
scorer (queue 0, KV 0 %) and would draw all the traffic exactly when it is dead. So such endpoints are
left out, and the gate fails open (every non-ejected endpoint) only when nothing at all is healthy, e.g.
before the first scrape round or when the scraper itself is down.

Readiness (``kvgate serve``'s ``/readyz``) and ``inference_pool_ready_pods`` (both doors, for pools of
listed endpoints; Kubernetes pools count Ready pods, as the reference) count by the same model
(``ready_endpoints``). Where routing fails open (no endpoint healthy), readiness counts only the
non-ejected endpoints whose scrape got a 2xx-4xx HTTP answer within ``metrics_staleness_s``
(``Endpoint.answered_at``): a fleet that answers its ``/metrics`` with 404 (SGLang without
``--enable-metrics``, a blocked path) serves and is ready (review s17-bigbody M2: readiness is never
stricter than routing); a pool whose every endpoint refuses or times out its scrapes, or answers them with
5xx (a sidecar or LB in front of dead servers, servers draining: review s17-fixes-b M1), has no ready
endpoint, however many requests it still sends them. Only where nothing is known yet (no endpoint scraped
or failed a scrape: before the first scrape round, or a gateway that does not scrape) does the ejection
flag alone count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvgate.datalayer.endpoint import Endpoint

DEFAULT_SCRAPE_FAILURES = 3
DEFAULT_METRICS_STALENESS_S = 5.0


@dataclass(slots=True, frozen=True)
class HealthPolicy:
    scrape_failures: int = DEFAULT_SCRAPE_FAILURES
    metrics_staleness_s: float = DEFAULT_METRICS_STALENESS_S


def is_healthy(ep: Endpoint, now: float, policy: HealthPolicy) -> bool:
    if not ep.healthy or ep.scrape_failures >= policy.scrape_failures:
        return False
    t = ep.metrics.updated_at
    return t is not None and now - t <= policy.metrics_staleness_s


def gate(endpoints: Sequence[Endpoint], now: float, policy: HealthPolicy) -> Sequence[Endpoint]:
    """The healthy endpoints; failing open to the non-ejected ones when none is healthy."""
    # (``is_healthy`` inlined: once per endpoint per pick; a loop, not a comprehension: that is a function
    # call in 3.11)
    failures, staleness = policy.scrape_failures, policy.metrics_staleness_s
    healthy = []
    for ep in endpoints:
        if (
            ep.healthy
            and ep.scrape_failures < failures
            and (t := ep.metrics.updated_at) is not None
            and now - t <= staleness
        ):
            healthy.append(ep)
    if not healthy:  # (none with fresh metrics: every endpoint not ejected, e.g. none scraped yet)
        for ep in endpoints:
            if ep.healthy:
                healthy.append(ep)
    return healthy


def ready_endpoints(endpoints: Sequence[Endpoint], now: float, policy: HealthPolicy) -> list[Endpoint]:
    """The endpoints readiness and ``inference_pool_ready_pods`` count: the healthy ones (``is_healthy``);
    when none is, the non-ejected ones that answered a scrape (a 2xx-4xx status) within
    ``metrics_staleness_s``: alive, served by ``gate``'s fail-open; when nothing is known yet (no endpoint
    has metrics or a failed scrape), the non-ejected ones. A dead pool (scrapes refused) counts 0."""
    healthy = [ep for ep in endpoints if is_healthy(ep, now, policy)]
    if healthy:
        return healthy
    if any(ep.metrics.updated_at is not None or ep.scrape_failures for ep in endpoints):
        staleness = policy.metrics_staleness_s
        return [
            ep
            for ep in endpoints
            if ep.healthy and (t := ep.answered_at) is not None and now - t <= staleness
        ]
    return [ep for ep in endpoints if ep.healthy]
