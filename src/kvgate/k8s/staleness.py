"""How stale the EPP's copy of the cluster is, and what it does about it.

While the API server is unreachable the reflectors keep their last list (as a client-go informer's cache
does) and the EPP keeps routing on it. This module makes that visible and, when asked, acts on it:

- the gauge ``kvgate_reflector_last_sync_age_seconds{name}``: seconds since each running reflector's copy was
  last known to be in sync with the API server (``Reflector.last_sync``: a list completed, a watch event or
  bookmark read, a watch the server ended at its ``timeoutSeconds``; 0 while a watch is open),
  computed when scraped; named after client-go's ``reflector_*`` family (label ``name``, the watched
  resource and namespace). No sample before a reflector's first list (its readiness says
  "not synced yet");
- a WARNING when a reflector has not been in sync for ``stale_after_s`` (what it routes on, its last
  error) and an INFO when it is in sync again, with how long it was not;
- the gauge ``kvgate_reflector_forbidden{name}``: 1 while a running reflector's requests are refused
  (403: RBAC lacks list/watch), else 0; the one sign of an objective/rewrite group that discovery
  tolerates forbidden (``PoolDiscovery.tolerated_forbidden``), besides its WARNING;
- ``problem()``: with ``not_ready_after_s`` set, the EPP reports not-ready (``/readyz`` 503, gRPC
  NOT_SERVING) once the InferencePool's or the pods' reflector is older than that, so traffic goes to a
  replica that still reaches its API server. Off by default: when every replica lost the API server,
  routing on the last list (with the data layer dropping endpoints whose scrapes fail) beats refusing.

A healthy watch is in sync while it is open (``Reflector.age()`` 0: a quiet watch may get no bookmark for its
whole timeoutSeconds) and again when the server ends it; hence the default ``stale_after_s`` of 120 s trips on
a lost or failing API server, and on a stuck one (connected, sending nothing) once the watch's liveness
probe goes unanswered (``Reflector.probe_after_s`` 60 s of silence + ``probe_timeout_s`` 10 s; the copy's
age then runs from the last probe answered), or answered only 4xx (429 throttled, 403: the watch stays open,
its copy's age runs from the last proof). The hub's watches of its member clusters
(``kvgate.multicluster.imports``) are logged the same way. The settings are checked in
``kvgate.k8s.stalepolicy``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterator, Sequence

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from kvgate.k8s.reflector import RUNNING, Reflector
from kvgate.k8s.stalepolicy import StalenessPolicy
from kvgate.k8s.tasks import cancel_and_wait
from kvgate.weakmembers import members

log = logging.getLogger(__name__)

AGE_METRIC = "kvgate_reflector_last_sync_age_seconds"
FORBIDDEN_METRIC = "kvgate_reflector_forbidden"


class StalenessMonitor:
    """Watches ``reflectors`` (all logged); ``routing`` (the pool and pods) decide readiness."""

    def __init__(
        self, reflectors: Sequence[Reflector], routing: Sequence[Reflector], policy: StalenessPolicy
    ) -> None:
        self.reflectors, self.routing, self.policy = list(reflectors), list(routing), policy
        # id(reflector) -> when it was last in sync before it was found stale (its last_sync then)
        self._stale: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Log each reflector that went stale or recovered since the last check."""
        for r in self.reflectors:
            age = r.age()
            stale = age is not None and age > self.policy.stale_after_s
            was = id(r) in self._stale
            if stale and not was:
                assert age is not None and r.last_sync is not None
                self._stale[id(r)] = r.last_sync
                log.warning("reflector %s: not in sync with the API server for %.0f s (stale after %g s); "
                            "keeping its last list (%d objects)%s", r.name, age, self.policy.stale_after_s,
                            len(r.items), f"; last error: {r.error}" if r.error else "")  # fmt: skip
            elif was and not stale:
                since = self._stale.pop(id(r))
                out = r.clock() - since  # (now: a watch that opened is in sync with last_sync unchanged)
                log.info(
                    "reflector %s: in sync with the API server again (%.0f s since it last was)", r.name, out
                )

    def stale(self) -> list[Reflector]:
        return [r for r in self.reflectors if id(r) in self._stale]

    def problem(self) -> str | None:
        """Why this replica should not be ready because its routing data is stale, or None."""
        limit = self.policy.not_ready_after_s
        if limit is None:
            return None
        for r in self.routing:
            age = r.age()
            if age is not None and age > limit:
                why = f": {r.error}" if r.error else ""
                return f"{r.name}: not in sync with the API server for {age:.0f} s (> {limit:g} s){why}"
        return None

    def start(self, interval_s: float | None = None) -> None:
        """Check every second (more often for a stale limit under 4 s: tests)."""
        if interval_s is None:
            interval_s = min(1.0, self.policy.stale_after_s / 4)
        if self._task is None:
            self._task = asyncio.create_task(self._run(interval_s), name="kube staleness")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, "kube staleness monitor", log)
            self._task = None

    async def _run(self, interval_s: float) -> None:
        while True:
            self.check()
            await asyncio.sleep(interval_s)


class _AgeCollector(Collector):
    """The gauge, read from the running reflectors at scrape time (one series per name: the oldest when
    two pools watch the same resource)."""

    def __init__(self, running: weakref.WeakSet[Reflector]) -> None:
        self.running = running

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ages: dict[str, float] = {}
        for r in members(self.running):
            age = r.age()
            if age is not None:
                ages[r.name] = max(age, ages.get(r.name, 0.0))
        g = GaugeMetricFamily(
            AGE_METRIC, "Seconds since the reflector's copy was last known in sync with the API server.",
            labels=["name"],
        )  # fmt: skip
        for name, age in sorted(ages.items()):
            g.add_metric([name], age)
        yield g
        # 1 while a reflector's last request was refused (403): RBAC lacks list/watch on what it reads
        # (a tolerated objective/rewrite group too, which /readyz does not show: qa26 F5)
        f = GaugeMetricFamily(
            FORBIDDEN_METRIC, "1 while the reflector's requests are refused by RBAC (403 Forbidden), else 0.",
            labels=["name"],
        )  # fmt: skip
        forbidden: dict[str, float] = {}
        for r in members(self.running):
            hit = 1.0 if r.error and r.error.startswith("403") else 0.0
            forbidden[r.name] = max(hit, forbidden.get(r.name, 0.0))
        for name, v in sorted(forbidden.items()):
            f.add_metric([name], v)
        yield f


REGISTRY.register(_AgeCollector(RUNNING))
