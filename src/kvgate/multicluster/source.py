"""Where a global gateway's clusters come from: the clusters file, and the InferencePoolImport its
``kubernetes:`` section follows. ``kvgate serve --clusters`` (``serve.GlobalGateway``) and the hub EPP
(``kvgate epp --clusters``, ``hub.HubFeed``) both use this one class, so the two doors read the same
section the same way.

The file's settings (``local``, ``ttl_s``, ``refresh_s``, ``tls``, ``limits``, ...) always apply; its
``clusters`` list does until the import controller (``imports.ImportController``) feeds the clusters that
export the followed import, which then replace it. ``apply`` gets the merged ``ClustersConfig`` each time
either side changes.

A reload that changes ``kubernetes:`` is applied live: the running controller is stopped and one built
from the new section started (new API-server clients, members, import, parent, ``controller`` flag). The
new clients are made before the old controller stops, so a section that cannot be loaded (a kubeconfig
that does not read) keeps the running one and says so in ``problem()``. Until the new controller's first
feed the gateway keeps the clusters it had from the old one that are still members of the same import
(nothing, when the import followed changed or the section went: then the file's own ``clusters``), so a
change of one member's RTT does not empty the gateway meanwhile. A controller that stops leaves the
import's parent entry in the hub (``imports``' rule: it stands for the global gateway, not one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from kvgate.k8s.client import KubeClient
from kvgate.k8s.lease import LeaderElector, check_one_time
from kvgate.k8s.runtime import default_identity
from kvgate.k8s.stalepolicy import StalenessPolicy
from kvgate.multicluster.clusters import ClustersConfig, ClustersError, ClusterSpec, KubeImports
from kvgate.multicluster.imports import ImportController, Member

log = logging.getLogger("kvgate.multicluster")
STOP_WAIT_S = 10.0  # how long a stop waits for a reload's kubernetes change under way
RETRY_S = 10.0  # a refused kubernetes section is tried again this often (a Secret may come after the file)


class ClusterSource:
    def __init__(
        self,
        cfg: ClustersConfig,
        apply: Callable[[ClustersConfig], None],
        *,
        parent_mode_only: bool = False,
        staleness: StalenessPolicy | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``staleness``: the members' InferencePool watches' (``--kube-stale-after``; default 120 s).
        ``clock`` and ``sleep``: one time (both or neither: ``check_one_time``; default the loop's) for
        the writers' leader election (its retry period, renew deadline, lease duration) and the members'
        watches (their ages, their liveness probes)."""
        check_one_time(clock, sleep)
        self.clock, self.sleep = clock or time.monotonic, sleep or asyncio.sleep
        self.file_cfg = cfg  # the clusters file as last read
        self.staleness = staleness or StalenessPolicy()
        self._apply = apply
        # The door routes in Parent mode only (the hub EPP): its import's ResolvedRefs counts only an
        # exporter's gateway address, whatever the file's ``kubernetes.parent_mode_only`` says.
        self.parent_mode_only = parent_mode_only
        self.imported: tuple[ClusterSpec, ...] | None = None  # the clusters the followed import names
        self.imports: ImportController | None = None
        self.running: KubeImports | None = None  # the section the running controller was built from
        self.error: str | None = None  # why the file's kubernetes section is not the running one
        # The section whose controller's feeds are taken: the running one, except between a reload that
        # changed it and the swap (the old controller, stopping, must not bring its list back).
        self._accepting: KubeImports | None = None
        self.swaps = 0  # kubernetes sections applied by a reload
        self.retry_s = RETRY_S
        self._refused_at: float | None = None  # (loop time) when the file's section was last refused
        self._clients: list[KubeClient] = []
        self._swap: asyncio.Task[None] | None = None
        # ``controller: true``: the running controller writes only while this holds the writers' Lease
        # (``kubernetes.lease``), so gateway replicas and a ``kvgate hub-controller`` make one writer.
        self.elector: LeaderElector | None = None
        self.identity = default_identity()

    def config(self) -> ClustersConfig:
        """The clusters file with the imported clusters in place of its own list (once fed)."""
        clusters = self.file_cfg.clusters if self.imported is None else self.imported
        return dataclasses.replace(self.file_cfg, clusters=clusters)

    async def start(self) -> None:
        """The import controller of the file's ``kubernetes:`` section, if any (a section that cannot be
        loaded raises ``ClustersError``: the process does not start)."""
        kube = self.file_cfg.kubernetes
        if kube is not None:
            try:
                clients, hub, members = await _connect(kube)
            except Exception as e:  # kubernetes_asyncio raises many kinds on a bad kubeconfig
                raise ClustersError("kubernetes", f"cannot load: {type(e).__name__}: {e}") from e
            self._run(kube, clients, hub, members)
            await self._start_running()

    def reload(self, cfg: ClustersConfig) -> None:
        """A clusters-file reload (``ClustersFile.on_change``, synchronous): applied at once, a changed
        ``kubernetes:`` section in a task (the controller's stop and start are I/O)."""
        old = self.file_cfg.kubernetes
        self.file_cfg = cfg
        if cfg.kubernetes != old:
            self.imported = _kept(self.imported, old, cfg.kubernetes)
            self._accepting = None
            prev = self._swap
            self._swap = asyncio.create_task(self._follow(prev))
        self._apply(self.config())

    def poll(self) -> None:
        """Called on each reload check: a refused section is tried again every ``retry_s`` (the
        kubeconfig it names may appear after the file: a Secret and a ConfigMap update separately)."""
        at = self._refused_at
        if at is None or (self._swap is not None and not self._swap.done()):
            return
        if asyncio.get_running_loop().time() - at >= self.retry_s:
            self._refused_at = None
            self._swap = asyncio.create_task(self._follow(self._swap))

    def problem(self) -> str | None:
        """Why the clusters from Kubernetes are not what the file asks for (a section not applied, a
        member not seen, a refused hub write), or None."""
        if self.error is not None:
            return self.error
        problem = None if self.imports is None else self.imports.problem()
        e = self.elector
        if problem is None and e is not None and e.error is not None and not e.leads():
            # (refused: written without the Lease, so maybe beside another writer; else written by none
            # until the Lease is held)
            how = "writing without it" if e.refused else "not writing"
            problem = f"lease {e.namespace}/{e.name} ({how}): {e.error}"
        return problem

    def dead(self) -> str | None:
        """Why the import controller's loop ended on its own (a restart is the way out), or None."""
        if self.elector is not None and (why := self.elector.dead()) is not None:
            return why
        return None if self.imports is None else self.imports.dead()

    async def settled(self) -> None:
        """Wait until the last reload's ``kubernetes:`` change is applied (or refused). However the swap
        ended (an error, cancelled) is not raised here; the caller's own cancellation is, and leaves the
        swap running (``asyncio.wait`` does not cancel what it waits for)."""
        while self._swap is not None and not self._swap.done():
            await asyncio.wait([self._swap])

    async def stop(self) -> None:
        """Stop the controller and close the clients. Raises nothing but the caller's cancellation: the
        gateway's stop goes on with the fetcher, the server and the router whatever failed here."""
        # A swap under way is let finish; it is short (local files, then a stop and a start), bounded
        # here all the same. Cancelled past the bound, it closes the clients it made and the controller
        # it was stopping still stops its watches (``_follow``, ``ImportController.stop``).
        with contextlib.suppress(TimeoutError):  # (not wait_for: see kvgate.k8s.tasks.wait_event)
            async with asyncio.timeout(STOP_WAIT_S):
                await self.settled()
        swap = self._swap
        if swap is not None and not swap.done():
            swap.cancel()
            await asyncio.wait([swap])
        if swap is not None and not swap.cancelled() and (exc := swap.exception()) is not None:
            log.error("clusters file: the kubernetes section's swap had failed: %r", exc, exc_info=exc)
        try:
            await self._stop_running()
        except Exception:
            log.exception("clusters file: stopping the import controller failed")

    # ---- internals ---------------------------------------------------------------------------
    def _run(self, kube: KubeImports, clients: list[KubeClient], hub: KubeClient | None,
             members: list[Member]) -> None:  # fmt: skip
        base = self.file_cfg

        def feed(cfg: ClustersConfig) -> None:
            if self._accepting != kube:
                return  # a controller the file no longer asks for, stopping: its list is not wanted
            self.imported = cfg.clusters
            self._apply(self.config())  # with the clusters file's latest other settings

        self._clients = clients
        self.running = self._accepting = kube
        parent_only = kube.parent_mode_only or self.parent_mode_only
        self.imports = ImportController(hub, members, follow=(kube.namespace, kube.name), on_clusters=feed,
                                        ttl_s=base.ttl_s, refresh_s=base.refresh_s, parent=kube.parent,
                                        writes=kube.controller, parent_mode_only=parent_only,
                                        staleness=self.staleness, clock=self.clock,
                                        sleep=self.sleep)  # fmt: skip
        if kube.controller and hub is not None:
            imports = self.imports
            lease_ns, lease_name = kube.lease_ref
            elector = self.elector = LeaderElector(
                hub, name=lease_name, namespace=lease_ns, identity=self.identity,
                on_change=lambda _leads: imports.wake(), on_refused=lambda _refused: imports.wake(),
                clock=self.clock, sleep=self.sleep,
            )  # fmt: skip

            def may_write() -> bool:
                # The Lease held; or refused outright (403: RBAC without leases, as an older chart's):
                # then this gateway writes as before there was a Lease, rather than not at all, and says
                # so (``problem``).
                return elector.leads() or elector.refused

            # Asked at each pass (a standby sends nothing) and before each write (one that stepped down
            # since the pass began sends nothing more).
            imports.elected = imports.leading = may_write

    async def _start_running(self) -> None:
        assert self.imports is not None
        await self.imports.start()
        if self.elector is not None:
            self.elector.start()

    async def _follow(self, prev: asyncio.Task[None] | None) -> None:
        """Make the running controller the file's section's (reloads one after another, in order)."""
        if prev is not None:
            await asyncio.wait([prev])  # however it ended
        kube = self.file_cfg.kubernetes
        if kube == self.running:  # changed back before this ran: the running one is the file's again
            self.error = self._refused_at = None
            self._keep_running()
            return
        clients: list[KubeClient] = []
        hub: KubeClient | None = None
        members: list[Member] = []
        if kube is not None:
            try:
                clients, hub, members = await _connect(kube)
            except Exception as e:  # kubernetes_asyncio raises many kinds on a bad kubeconfig
                why = f"{type(e).__name__}: {e}"
                error = f"kubernetes section not applied (the running one is kept): {why}"
                if error != self.error:  # (retried every retry_s: said once per cause)
                    log.error("clusters file: %s; retrying every %.0fs", error, self.retry_s)
                self.error = error
                self._refused_at = asyncio.get_running_loop().time()
                self._keep_running()
                return
        try:
            # (A retry that now loads: the kept clusters follow the section as at a reload.)
            self.imported = _kept(self.imported, self.running, kube)
            self._accepting = None
            self._apply(self.config())
            await self._stop_running()
        except BaseException:  # cancelled by a stop (or failed) before the new clients were handed over
            await _close_all(clients)
            raise
        self.error = self._refused_at = None
        self.swaps += 1
        if kube is None:
            log.warning("clusters file: kubernetes section removed; the clusters file's own list applies")
            return
        self._run(kube, clients, hub, members)  # the clients are the running controller's from here
        await self._start_running()
        log.warning("clusters file: kubernetes section applied: import %s/%s, members %s, controller %s",
                    kube.namespace, kube.name, ", ".join(m.name for m in kube.members),
                    "on" if kube.controller else "off (read-only)")  # fmt: skip

    def _keep_running(self) -> None:
        """Go on with the running controller: its feeds taken again, its list fed again (the reload
        dropped the clusters of the members it had removed)."""
        self._accepting = self.running
        if self.imports is not None:
            self.imports.refeed()

    async def _stop_running(self) -> None:
        imports, clients, elector = self.imports, self._clients, self.elector
        self.imports, self._clients, self.running, self._accepting = None, [], None, None
        self.elector = None
        try:
            try:
                if imports is not None:
                    await imports.stop()
            finally:  # the Lease released (after the last write): another writer takes over at once
                if elector is not None:
                    await elector.stop()
        finally:
            await _close_all(clients)


async def _close_all(clients: list[KubeClient]) -> None:
    """Close every client, each whatever the others' closes raised (logged, not raised: a close that
    fails must not leave the rest open nor fail a swap or a stop)."""
    for client in clients:
        try:
            await client.close()
        except Exception:
            log.exception("clusters file: closing an API-server client failed")


async def _connect(kube: KubeImports) -> tuple[list[KubeClient], KubeClient | None, list[Member]]:
    """The section's API-server clients: the hub's (only for ``controller: true``; a read-only gateway
    never talks to the hub) and each member's. All closed again if one cannot be made."""
    clients: list[KubeClient] = []
    try:
        hub = None
        if kube.controller:
            hub = await KubeClient.connect(kube.server, kube.kubeconfig)
            clients.append(hub)
        members = []
        for m in kube.members:
            client = await KubeClient.connect(m.server, m.kubeconfig)
            clients.append(client)
            members.append(Member(m.name, client, m.rtt_ms, m.priority))
    except BaseException:
        await _close_all(clients)
        raise
    return clients, hub, members


def _kept(
    imported: tuple[ClusterSpec, ...] | None, old: KubeImports | None, new: KubeImports | None
) -> tuple[ClusterSpec, ...] | None:
    """The imported clusters kept until the new section's controller feeds its own: those still members
    of the same import; None (the file's list) when the import followed changed or the section went."""
    if imported is None or old is None or new is None:
        return None
    if (old.namespace, old.name) != (new.namespace, new.name):
        return None
    names = {m.name for m in new.members}
    kept = tuple(c for c in imported if c.name in names)
    return kept or None
