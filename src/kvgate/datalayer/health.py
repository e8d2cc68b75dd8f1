"""One health model for both front doors: which endpoints may be picked at all.

An endpoint is a candidate only while all of these hold:
- it is not ejected (``Endpoint.healthy``: either door ejects after failed requests, see
  ``kvgate.datalayer.ejection``: both doors charge the answers they see);
- its last ``scrape_failures`` scrapes did not all fail (``Endpoint.scrape_failures``, counted by the
  scraper: a dead server's port refuses scrapes long before anything else notices);
- its metrics are known and younger than ``metrics_staleness_s``.

"Unknown is not zero load": an endpoint whose metrics are missing or old looks idle to every load-aware
scorer (queue 0, KV 0 %) and would draw all the traffic exactly when it is dead. So such endpoints are
left out while any endpoint is healthy.

With none healthy the gate fails open to the pool's best "standing" (``standing``), one notion of "can
take traffic now" that combines the ejection flag with the scrapes (review s30-qa30 Q1/Q3/Q7: before,
the fail-open, the retry's "anywhere left?" and the gateway's "never the last healthy one" read the flag
alone, so a dead server that was never ejected drew every request while the server that was ejected and
had come back, scraped fresh, waited for its probe):
- UP: not ejected, not down by its scrapes (``scrape_down``: metrics unknown or old, e.g. before the
  first scrape round, or a fleet that answers ``/metrics`` 404);
- REVIVED: ejected, seen down by its scrapes since its ejection (``Endpoint.down_since_ejected``, marked
  by the gateway's probe loop), and now not down by them, a scrape answered within
  ``metrics_staleness_s`` (a server that came back from an outage, before its probe; Envoy's panic
  threshold also routes to ejected hosts). One ejected for failing its requests while its scrapes
  answered is OUT (review s30-rev-d30 F2);
- SCRAPE_DOWN: not ejected, down by its scrapes (every endpoint so: the scraper itself may be cut off);
- OUT: ejected, and down by its scrapes or not scraped lately.

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


UP, REVIVED, SCRAPE_DOWN, OUT = range(4)


def scrape_down(ep: Endpoint, now: float, policy: HealthPolicy) -> bool:
    """Down by its scrapes: its last ``scrape_failures`` scrapes failed without an HTTP answer (refused,
    timed out, a 5xx) since its last good page. A scrape answered 2xx-4xx is a sign of life even when it
    fails: a server that answers ``/metrics`` with 404 (SGLang without ``--enable-metrics``: every
    scrape fails) is alive (``answered_at`` after its last page's ``updated_at``, or no page ever)."""
    if ep.scrape_failures < policy.scrape_failures:
        return False
    a = ep.answered_at
    if a is None or now - a > policy.metrics_staleness_s:
        return True
    t = ep.metrics.updated_at
    return t is not None and a <= t


def standing(ep: Endpoint, now: float, policy: HealthPolicy) -> int:
    """How ready ``ep`` is to take traffic when no endpoint is healthy: UP, REVIVED, SCRAPE_DOWN or OUT."""
    down = scrape_down(ep, now, policy)
    if ep.healthy:
        return SCRAPE_DOWN if down else UP
    # Ejected: back only on evidence, down by its scrapes since its ejection and a scrape answered lately
    # (never scraped is not alive). One ejected for failing its requests while its scrapes answered stays
    # OUT: its scrapes say nothing of its requests (review s30-rev-d30 F2: REVIVED outranks SCRAPE_DOWN,
    # it took every request from a serving peer whose scrapes failed).
    if not ep.down_since_ejected or down:
        return OUT
    a = ep.answered_at
    return REVIVED if a is not None and now - a <= policy.metrics_staleness_s else OUT


def up(ep: Endpoint, now: float, policy: HealthPolicy) -> bool:
    """Not ejected and not down by its scrapes: a peer that can take traffic now (the gateway ejects an
    endpoint only while another is, ``kvgate.datalayer.ejection``)."""
    return ep.healthy and not scrape_down(ep, now, policy)


def serving(endpoints: Sequence[Endpoint], now: float, policy: HealthPolicy) -> list[Endpoint]:
    """The endpoints of the pool's best standing (UP, else REVIVED, else SCRAPE_DOWN; none when every one
    is OUT): where traffic can go now. A retry goes only to an untried one of these (not to the best
    of the untried: a scrape-dead server beside a live one is not "somewhere left to retry")."""
    best: list[Endpoint] = []
    rank = OUT
    for ep in endpoints:
        r = standing(ep, now, policy)
        if r < rank:
            best, rank = [ep], r
        elif r == rank and r != OUT:
            best.append(ep)
    return best


def gate(endpoints: Sequence[Endpoint], now: float, policy: HealthPolicy) -> Sequence[Endpoint]:
    """The healthy endpoints; failing open to the pool's best standing (``serving``) when none is."""
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
    if healthy:
        return healthy
    # None with fresh metrics: e.g. none scraped yet, a 404 fleet, a whole-pool outage. While no
    # non-ejected endpoint is down by its scrapes, every one is UP: the best standing is theirs (review
    # s30-rev-d30 L1: ``serving`` costs 2-3x this on pools that always fail open).
    live = []
    for ep in endpoints:
        if ep.healthy:
            if ep.scrape_failures >= failures and scrape_down(ep, now, policy):
                return serving(endpoints, now, policy)
            live.append(ep)
    return live or serving(endpoints, now, policy)


def ready_endpoints(endpoints: Sequence[Endpoint], now: float, policy: HealthPolicy) -> list[Endpoint]:
    """The endpoints readiness and ``inference_pool_ready_pods`` count: the healthy ones (``is_healthy``);
    when none is, the non-ejected ones that answered a scrape (a 2xx-4xx status) within
    ``metrics_staleness_s``: alive, served by ``gate``'s fail-open; with no endpoint UP, the REVIVED ones
    (``gate`` serves them then); when nothing is known yet (no endpoint has metrics or a failed scrape),
    the non-ejected ones. A dead pool (scrapes refused) counts 0."""
    healthy = [ep for ep in endpoints if is_healthy(ep, now, policy)]
    if healthy:
        return healthy
    if any(ep.metrics.updated_at is not None or ep.scrape_failures for ep in endpoints):
        staleness = policy.metrics_staleness_s
        alive = [
            ep
            for ep in endpoints
            if ep.healthy and (t := ep.answered_at) is not None and now - t <= staleness
        ]
        if alive or any(up(ep, now, policy) for ep in endpoints):
            return alive
        return [ep for ep in endpoints if standing(ep, now, policy) == REVIVED]
    return [ep for ep in endpoints if ep.healthy]
