"""Time ``kvgate.datalayer.health.gate``'s fail-open (no endpoint healthy) on 8 and 64 endpoints: never
scraped, and a 404 fleet (every scrape answered 404: SGLang without ``--enable-metrics``). Prints the
best of 5 x 20,000 calls per case (review s30-rev-d30 L1). Run under ``flock /work/team/live.lock`` and
compare only figures from one run (``PYTHONPATH`` picks the tree)."""

from __future__ import annotations

import timeit

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.health import HealthPolicy, gate

POLICY = HealthPolicy(3, 5.0)


def _pool(n: int, answered_404: bool) -> list[Endpoint]:
    eps = [Endpoint(f"10.0.0.{i}:8000", metrics=EndpointMetrics(updated_at=None)) for i in range(n)]
    if answered_404:
        for ep in eps:
            ep.scrape_failures, ep.answered_at = 9, 99.5
    return eps


def main() -> None:
    for label, answered_404 in (("never scraped", False), ("404 fleet", True)):
        for n in (8, 64):
            eps = _pool(n, answered_404)
            best = min(timeit.repeat(lambda eps=eps: gate(eps, 100.0, POLICY), number=20000, repeat=5))
            print(f"{label:13} {n:3} endpoints {best / 20000 * 1e6:.2f} us")


if __name__ == "__main__":
    main()
