"""What a front door starts for ``--pool-name`` (``pools[].inferencePool``): a client, the pool's
discovery and, when asked, leader election; and one readiness answer for ``/readyz`` and gRPC health."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kvgate.aio import cancel_and_wait, stop_to_the_end
from kvgate.config.gateway import RewriteRule
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.client import KubeClient
from kvgate.k8s.discovery import PoolDiscovery
from kvgate.k8s.lease import LeaderElector, check_one_time
from kvgate.k8s.legacy import warn_if_served
from kvgate.k8s.staleness import StalenessMonitor
from kvgate.k8s.stalepolicy import StalenessPolicy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KubeOptions:
    pool_name: str
    pool_namespace: str = "default"
    pool_group: str = R.INFERENCE_POOL.group  # (``R.POOL_GROUPS``: the reference EPP's ``--pool-group``)
    server: str | None = None
    kubeconfig: str | None = None
    leader_election: bool = False
    lease_name: str | None = None
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    identity: str | None = None
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)


def default_identity() -> str:
    """``$POD_NAME`` (the Downward API) or the hostname, plus a random suffix: unique per process."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class KubePool:
    def __init__(
        self,
        opts: KubeOptions,
        store: EndpointStore,
        *,
        store_pool: str | None = None,
        on_policy: Callable[[dict[str, int], list[RewriteRule]], None] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``clock`` and ``sleep``: one time (``check_one_time``: both or neither) where the leader election
        runs; without it ``clock`` alone times the reflectors' ages (and ``sleep``, default the loop's,
        their watches' liveness probes)."""
        self.opts, self.store, self.store_pool, self.on_policy = opts, store, store_pool, on_policy
        if opts.leader_election:
            check_one_time(clock, sleep)
        self._time = (clock, sleep)  # (the leader election's, as given)
        self.clock = clock or time.monotonic  # (the reflectors' ages)
        self.client: KubeClient | None = None
        self.discovery: PoolDiscovery | None = None
        self.elector: LeaderElector | None = None
        self.staleness: StalenessMonitor | None = None
        self.legacy_check: asyncio.Task[bool] | None = None  # (the InferenceModel warning, once)

    async def start(self) -> None:
        o = self.opts
        self.client = await KubeClient.connect(o.server, o.kubeconfig)
        pool_type = R.POOL_GROUPS[o.pool_group]
        log.info("discovering InferencePool %s/%s (%s) from %s", o.pool_namespace, o.pool_name,
                 pool_type.group_version, self.client.host)  # fmt: skip
        self.discovery = PoolDiscovery(
            self.client, self.store, pool_name=o.pool_name, namespace=o.pool_namespace, pool_type=pool_type,
            store_pool=self.store_pool, on_policy=self.on_policy, clock=self.clock,
            sleep=self._time[1] or asyncio.sleep,
        )  # fmt: skip
        self.discovery.start()
        self.legacy_check = asyncio.create_task(warn_if_served(self.client), name="InferenceModel check")
        d = self.discovery
        self.staleness = StalenessMonitor(d.reflectors, [d.pool_reflector, d.pod_reflector], o.staleness)
        self.staleness.start()
        if o.leader_election:
            self.elector = LeaderElector(
                self.client, name=o.lease_name or f"kvgate-epp-{o.pool_name}", namespace=o.pool_namespace,
                identity=o.identity or default_identity(), lease_duration_s=o.lease_duration_s,
                renew_deadline_s=o.renew_deadline_s, retry_period_s=o.retry_period_s,
                clock=self._time[0], sleep=self._time[1],
            )  # fmt: skip
            self.elector.start()

    async def stop(self) -> None:
        """The staleness monitor and the election stopped (the Lease released), the discovery's watches
        stopped, the client closed, each whatever the step before raised (logged); to the end also when
        cancelled meanwhile, the cancellation raised after (``stop_to_the_end``: a cancel had skipped what
        followed the step it landed in: the watches and the client's session)."""
        o = self.opts
        await stop_to_the_end(self._stop(), f"InferencePool {o.pool_namespace}/{o.pool_name}: stopping", log)

    async def _stop(self) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if (task := self.legacy_check) is not None:
            steps.append(("InferenceModel check", lambda: cancel_and_wait(task, "InferenceModel check", log)))
        if self.staleness is not None:
            steps.append(("staleness monitor", self.staleness.stop))
        if self.elector is not None:
            steps.append(("leader election", self.elector.stop))
        if self.discovery is not None:
            steps.append(("discovery", self.discovery.stop))
        if self.client is not None:
            steps.append(("client", self.client.close))
        for what, step in steps:
            try:
                await step()
            except Exception:  # (one that fails must not leave the rest running)
                log.exception("InferencePool %s/%s: stopping its %s failed", self.opts.pool_namespace,
                              self.opts.pool_name, what)  # fmt: skip

    def problem(self) -> str | None:
        """Why this replica must not receive traffic now, or None. Non-leaders keep discovering (their
        data stays warm for a failover) but are not ready."""
        if self.discovery is None:
            return "not started"
        p = self.discovery.problem()
        if p is not None:
            return p
        if self.staleness is not None and (p := self.staleness.problem()) is not None:
            return p
        if self.elector is not None and not self.elector.is_leader:
            return f"not the leader (lease held by {self.elector.holder or 'nobody'})"
        return None

    def ready_pods(self) -> int:
        return self.discovery.ready_pods() if self.discovery is not None else 0
