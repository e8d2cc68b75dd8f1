"""The hub controller: exported InferencePools in member clusters -> InferencePoolImport status in the hub.

GIE proposal 1374: an InferencePool annotated ``inference.networking.x-k8s.io/export: "ClusterSet"`` in a
member cluster is imported in the hub as a status-only, controller-managed ``InferencePoolImport``
(``inference.networking.x-k8s.io/v1alpha1``, same namespace and name) whose
``status.controllers[].exportingClusters[].name`` lists the clusters exporting it. This controller watches
``InferencePool``s in every member (one reflector per member API server, ``kvgate.k8s``), creates the
import when a pool is first exported, rewrites its status when the set of exporters changes, and deletes
the imports it created once nothing exports them.

It also feeds the global gateway: for the import it follows, each exporting cluster becomes a
``ClusterSpec`` whose addresses come from annotations on that cluster's exported pool
(``kvgate.io/gateway`` host:port for Parent mode, ``kvgate.io/epp`` for Endpoint mode, ``kvgate.io/aggregate``
the pool aggregate URL, ``kvgate.io/health``), with the RTT and priority of the member from the hub's
members list.

On each member's exported pool it writes the ``Exported`` condition (GIE ``InferencePoolConditionExported``)
in a ``status.parents[]`` entry of its own (``controllerName: kvgate.io/multicluster-import-controller``,
``parentRef`` the hub's ``InferencePoolImport`` of the same namespace and name): ``True`` / ``Exported``
once the hub's import lists that cluster, ``False`` / ``NotSupported`` for an export value other than
``ClusterSet``; the entry is removed when the export annotation is (as the proposal requires). Other
controllers' parent entries are kept (the list is atomic: read, change ours, write with the
resourceVersion).

For the import it follows, the controller also writes that import's own ``parents[]`` in its
``status.controllers[]`` entry (GIE ``ParentStatus``): the global gateway is the parent (``parent``, a
Gateway reference from the clusters file), with ``Accepted`` (True / ``Accepted``: the gateway routes the
import) and ``ResolvedRefs`` (True / ``ResolvedRefs`` when every exporting cluster's pool names an address
kvgate can reach it by, else False / ``InvalidExtensionRef`` naming the clusters that do not; for a hub
EPP, ``parent_mode_only``, only a gateway address counts: it routes in Parent mode only). Other
controllers' ``controllers[]`` entries and other parents' entries in ours are kept (read, change ours,
write guarded by the resourceVersion).

The parent entry stands for the global gateway, not for one process: several gateway replicas, or a
gateway and a standalone ``kvgate hub-controller`` during an upgrade, write the same entry, and none can
know it is the last. So a controller that stops leaves it; it goes with the import (deleted once nothing
exports it).

The hub is the record of what was written, not this process's memory: at the start (a new leader, a
restarted gateway) and every ``resync_s`` the controller lists the hub's imports that carry its
``controllers[]`` entry, or no entry at all but kvgate's ``app.kubernetes.io/managed-by`` label and
``CREATED_FOR`` naming that import and this install (its parent): an import this install created whose
entry was never written (the status write refused, or its writer stepped down in between). A copy made
by hand (another name), another install's import, or one whose kvgate entry went while another
controller's stayed, are not taken; and reconciles them
with the members: it deletes those nothing exports any more (also the ones a previous leader created),
and rewrites an entry another writer changed (an old gateway that removed the parent entry on its
stop). A member it cannot see yet (not synced, an RBAC error, a lost link) keeps what the hub says it
exports: nothing is dropped or deleted for a member not seen. An exporter that is not one of its members
(another kvgate install writing the same hub under the same controller name) is kept too: the controller
only adds or drops its own members (a delete reads the import first and keeps it if it lists such an
exporter; a status write keeps those the import lists as read just before it, not as at the last
read-back). Installs are told apart by their parent (``kubernetes.parent``): two installs left at the
default parent name in one namespace are one install to this rule. Member names should be unique across
installs; where they are not, an import another install created (``CREATED_FOR`` naming it) is never
deleted here, and a name of one of this install's members is dropped from it only once this controller
saw that member export it (``claimed``): when nothing of ours exports it, only kvgate's entry goes and
the creating install takes the import back at its read-back.

Under leader election (``kvgate hub-controller``) nothing fences a write: the API server does not check
the Lease. Every write asks ``leading`` before it is sent, so none leaves once this replica stepped down,
and the step-down stops the controller, cancelling a write in flight, at the latest ``renew_deadline``
after the last renewal, while a standby waits ``lease_duration`` (5 s more, by default). A write the API
server received before that and applies later (a slow server) can still land after the next leader read
the hub back: it carries the resourceVersion its writer read (a status write in ``metadata``, a DELETE as
its ``preconditions``), so it is refused (409) if the new leader wrote that import since; otherwise it
stands until the new leader's next read-back (``resync_s``), which rewrites it (or writes again an import
it deleted). A 409 on a DELETE is decided again on a fresh read (``DELETE_TRIES``); 404 is gone already.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kvgate.k8s import resources as R
from kvgate.k8s.client import KubeClient, KubeError
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.staleness import StalenessMonitor
from kvgate.k8s.stalepolicy import StalenessPolicy
from kvgate.k8s.tasks import RECANCELS, STUCK_S, cancel_and_wait, finish_shielded, wait_event
from kvgate.multicluster.clusters import (
    ClustersConfig,
    ClustersError,
    ClusterSpec,
    ParentRef,
    _aggregate_url,
    _hostport,
    gateway_literal,
    install_id,
)

log = logging.getLogger("kvgate.multicluster.imports")

EXPORT_ANNOTATION = "inference.networking.x-k8s.io/export"
EXPORT_VALUE = "ClusterSet"
CONTROLLER_NAME = "kvgate.io/multicluster-import-controller"
EXPORTED = "Exported"  # condition type and its True reason (GIE api/v1 InferencePoolConditionExported)
ACCEPTED, RESOLVED_REFS = "Accepted", "ResolvedRefs"  # GIE ParentStatus conditions (True reason = type)
INVALID_REF = "InvalidExtensionRef"  # ResolvedRefs False: an exporter kvgate has no address for
NOT_SUPPORTED = "NotSupported"  # False: an export was asked for in a way this controller does not serve
MANAGED_BY = {"app.kubernetes.io/managed-by": "kvgate"}
# Set on an import this controller creates: "<namespace>/<name> for <install>", the install being the
# parent the controller writes (the global gateway it stands for). An import carrying only the label
# (its entry never written) is taken as one's own at the read-back only with this annotation naming that
# very import and that install: a copy of it made by hand (another name), or one another install created,
# is not.
CREATED_FOR = "kvgate.io/created-for"
GATEWAY_ANN, EPP_ANN, AGGREGATE_ANN, HEALTH_ANN = (
    "kvgate.io/gateway",
    "kvgate.io/epp",
    "kvgate.io/aggregate",
    "kvgate.io/health",
)


def _managed(meta: Mapping[str, Any]) -> bool:
    """Whether an object's metadata carries kvgate's managed-by label."""
    labels = meta.get("labels") or {}
    return all(labels.get(k) == v for k, v in MANAGED_BY.items())


class NotLeading(KubeError):
    """A write not sent: this replica no longer holds the Lease (its controller is being stopped)."""

    def __init__(self) -> None:
        super().__init__(0, "this replica no longer leads: the write was not sent", "NotLeading")


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    client: KubeClient
    rtt_ms: float = 0.0
    priority: int = 0


Key = tuple[str, str]  # (namespace, name)
# How a reconcile fails and is retried: a refusal or conflict (KubeError), the connection dropped or a
# response cut (aiohttp.ClientError: ServerDisconnectedError, ClientPayloadError, ...), a timeout, an
# answer that is not JSON (ValueError).
HUB_FAILED = (KubeError, aiohttp.ClientError, OSError, TimeoutError, ValueError)
# How long ImportController.stop waits for the members' watches to stop, through further cancellations:
# the reflectors stop together, each at most (RECANCELS + 1) x STUCK_S; past this they go on stopping
# in the background (logged).
WATCHES_STOP_S = (RECANCELS + 1) * STUCK_S + 5.0
DELETE_TRIES = 3  # a DELETE refused by its precondition (409: changed since read) is decided again
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0  # a failed reconcile is retried after 0.5 s, 1 s, 2 s, ... 30 s


def retry_pause(failures: int) -> float:
    """The pause after ``failures`` failed reconciles in a row. The exponent is bounded: a hub refusing
    for hours (thousands of failures) must not overflow the float and end the loop."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** min(max(failures - 1, 0), 16))


@dataclass(slots=True)
class ImportController:
    hub: KubeClient | None  # None: read-only (``writes`` False), the hub is not written
    members: Sequence[Member]
    # The import the global gateway routes for (namespace, name) and where its cluster list goes.
    follow: Key | None = None
    on_clusters: Callable[[ClustersConfig], None] | None = None
    ttl_s: float = 3.0
    refresh_s: float = 0.5
    # The Gateway the follower stands for: the followed import's ``parents[]`` entry (None: not written).
    parent: ParentRef | None = None
    # The gateways that follow the import route in Parent mode only (the hub EPP, ``kvgate epp
    # --clusters``): an exporter without a ``kvgate.io/gateway`` address is not resolved (``ResolvedRefs``
    # False) even with a ``kvgate.io/epp`` one.
    parent_mode_only: bool = False
    # False: only read the members and feed the cluster list; a standalone ``kvgate hub-controller``
    # writes the imports, their status and the Exported conditions (one writer however many gateways).
    writes: bool = True
    # How often the hub's imports are read back and reconciled (whatever this process thinks it wrote).
    resync_s: float = 30.0
    # Under leader election: whether this replica still leads, asked before every write is sent (None:
    # always). A write refused so raises ``NotLeading``, which ends the pass: no failure, no back-off,
    # no warning (``stepped_down`` counts them); the next pass starts from a read-back.
    leading: Callable[[], bool] | None = None
    # Gateways running the controller compete for the writers' Lease (``kubernetes.lease``, with each
    # other and with ``kvgate hub-controller``): while this says no the controller is a standby, reading
    # the members and feeding the gateway's clusters, sending nothing to the hub nor to a member, and no
    # problem for that; elected, it starts by reading the hub back (``wake``). None: always elected.
    elected: Callable[[], bool] | None = None
    # (namespace, name) -> {member: exported pool object}
    exported: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # What the hub's status says (read back from the hub at the start and every ``resync_s``).
    written: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    # The parent entry's state in each import (``_parent_state``), as written or read back.
    parent_written: dict[Key, tuple[str, str] | None] = field(default_factory=dict)
    # Imports whose ``CREATED_FOR`` names another install (as last read): never deleted by this
    # controller, and a member name they list is dropped only if ``claimed`` (member names are each
    # install's own, so another install's ``east`` may be listed there).
    foreign: set[Key] = field(default_factory=set)
    # (import, member) pairs this controller saw its member export (this process): in another install's
    # import, the names it may remove once they no longer export.
    claimed: dict[Key, set[str]] = field(default_factory=dict)
    reconciles: int = 0
    stepped_down: int = 0  # passes ended by a write ``leading`` refused (this replica stepped down)
    error: str | None = None  # why the last reconcile failed (a hub write refused, ...), until one succeeds
    # Every member pool seen, exported or not: (member, key) -> object (to add or remove our condition).
    pools: dict[tuple[str, Key], dict[str, Any]] = field(default_factory=dict)
    # The Exported condition last written per member pool, until that pool's next event arrives.
    marked: dict[tuple[str, Key], tuple[str, str] | None] = field(default_factory=dict)
    # The members' InferencePool watches are logged as the EPP's are (``kvgate.k8s.staleness``): a WARNING
    # once one has not been in sync for ``staleness.stale_after_s`` (the member's exports are kept as last
    # read), an INFO when it is again. Never not-ready: the clusters, not a member's pods, are the candidates.
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)
    clock: Callable[[], float] = time.monotonic  # the reflectors' (their ages, the staleness log)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the same time (their liveness probes)
    monitor: StalenessMonitor | None = None
    _reflectors: list[Reflector] = field(default_factory=list)
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _read_back: bool = False  # ``written`` is the hub's (False: list the hub's imports first)
    _watch_sync: list[asyncio.Task[None]] = field(default_factory=list)
    _last_clusters: tuple[ClusterSpec, ...] | None = None
    _orphans_said: set[Key] = field(default_factory=set)  # label-only imports with no CREATED_FOR, logged
    # (member, import, annotation) -> the unusable address last logged for it (``_addresses``): once each
    _bad_said: dict[tuple[str, Key, str], str] = field(default_factory=dict)
    # (member, import) -> the gateway (and its first holder) last logged as another member's (``_say_shared``)
    _shared_said: dict[tuple[str, Key], str] = field(default_factory=dict)

    async def start(self) -> None:
        for m in self.members:
            r = Reflector(m.client, R.INFERENCE_POOL, cluster=m.name, clock=self.clock, sleep=self.sleep)
            r.add_listener(functools.partial(self._on_pool, m.name))
            r.start()
            self._reflectors.append(r)
            if self.writes:  # a member seen for the first time may settle what its absence held back
                self._watch_sync.append(asyncio.create_task(self._on_synced(r)))
        self.monitor = StalenessMonitor(self._reflectors, [], self.staleness)
        self.monitor.start()
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """The election's outcome changed: reconcile now, reading the hub back first (another writer
        wrote it meanwhile)."""
        self._read_back = False
        self._dirty.set()

    async def _on_synced(self, r: Reflector) -> None:
        await r.synced.wait()
        self._dirty.set()

    async def stop(self) -> None:
        """Stop the reconcile loop and the members' watches. The watches stop even when this stop is
        cancelled while it waits for the loop (a bounded stop giving up), cancelled again while they
        stop (waited for up to ``WATCHES_STOP_S``, then the cancellation raised), or one of them fails."""
        try:
            if self._task is not None:  # ended on its own (a bug): logged, and the rest still stops
                await cancel_and_wait(self._task, "import controller: the reconcile loop", log)
        finally:
            for t in self._watch_sync:
                t.cancel()
            # The watches stop in a task of their own, waited for through a further cancellation: this
            # finally may run under a first cancel (the hub controller's follower stopped as it stepped
            # down), and ``cancel_and_wait``'s re-cancel 5 s later cut it at its next await, leaving the
            # remaining watches running with nothing left to stop them. Bounded: the reflectors stop
            # together, each with cancel_and_wait (at most 3 x STUCK_S), and so is the wait here.
            watches = asyncio.create_task(self._stop_watches(), name="import controller: stopping watches")
            await finish_shielded(watches, "import controller: stopping the members' watches", log,
                                  WATCHES_STOP_S)  # fmt: skip
        # The parent entry stays (see the module's docstring): other gateways may still route the import.

    async def _stop_watches(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        stops = await asyncio.gather(*(r.stop() for r in self._reflectors), return_exceptions=True)
        for r, res in zip(self._reflectors, stops, strict=True):
            if isinstance(res, Exception):  # (one failing: the others still stop)
                log.error("import controller: stopping the watch %s failed: %r", r.name, res, exc_info=res)

    def _on_pool(self, member: str, etype: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", "default"), meta.get("name", ""))
        exported = (meta.get("annotations") or {}).get(EXPORT_ANNOTATION) == EXPORT_VALUE
        by_member = self.exported.setdefault(key, {})
        if etype == "DELETED":
            self.pools.pop((member, key), None)
        else:
            self.pools[(member, key)] = dict(obj)
        self.marked.pop((member, key), None)
        if etype != "DELETED" and exported:
            by_member[member] = dict(obj)
            self.claimed.setdefault(key, set()).add(member)
        else:
            by_member.pop(member, None)
        if not by_member:
            self.exported.pop(key, None)
        self._dirty.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        # The read-back is due every ``resync_s`` whatever the pool events: a member whose pools change
        # more often than that must not put it off for good.
        next_resync = loop.time() + self.resync_s
        failures = stepdowns = 0
        while True:
            await wait_event(self._dirty, next_resync - loop.time())  # (not wait_for: see wait_event)
            if loop.time() >= next_resync:
                self._read_back = False  # the periodic resync: the hub's imports read back
                next_resync = loop.time() + self.resync_s
            self._dirty.clear()
            try:
                await self.reconcile()
                self.error = None
                failures = stepdowns = 0
            except NotLeading:
                # Stepped down during the pass: the pass ends there, as a standby's would. Not a hub
                # failure (no error, no warning). The pass is tried again, quietly, after a pause growing
                # as a failure's would: a replica whose renewal came late leads again without an
                # election event, and its writes must not wait for the next resync; a standby's pass
                # ends at once. Each term starts from a read-back.
                self.stepped_down += 1
                stepdowns += 1
                if stepdowns == 1:
                    log.info("import reconcile: this replica no longer leads; the pass ended")
                self._read_back = False
                self.error = None
                failures = 0
                await self._back_off(retry_pause(stepdowns))
                self._dirty.set()
            except HUB_FAILED as e:
                failures += 1
                pause = retry_pause(failures)  # a lasting refusal: back off
                log.warning("import reconcile failed (retrying in %.1fs): %s: %s", pause, type(e).__name__, e)
                self.error = f"{type(e).__name__}: {e}" if not isinstance(e, KubeError) else str(e)
                await self._back_off(pause)
                self._dirty.set()

    async def _back_off(self, pause: float) -> None:
        """Wait ``pause`` before the hub is tried again, feeding the gateway's clusters on each pool event
        meanwhile: they depend on the members only, so a refusing hub must not delay them."""
        loop = asyncio.get_running_loop()
        until = loop.time() + pause
        while (left := until - loop.time()) > 0:
            if await wait_event(self._dirty, left):
                self._dirty.clear()
                self._feed()

    async def _send(self, client: KubeClient, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """A write (to the hub or a member): not sent once this replica no longer leads. It cannot
        fence a write already sent (see the module's docstring)."""
        if self.leading is not None and not self.leading():
            raise NotLeading()
        return await client.request(method, path, **kw)

    def _hub(self) -> KubeClient:
        assert self.hub is not None, "a read-only controller writes nothing to the hub"
        return self.hub

    def dead(self) -> str | None:
        """Why the reconcile loop ended on its own (an error nobody foresaw), or None while it runs."""
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return f"reconcile loop stopped: {task.exception()!r}"
        return None

    def problem(self) -> str | None:
        """Why this controller is not doing its job now, or None: a member it cannot see (an RBAC error,
        not synced yet), or a reconcile that failed (a hub write refused)."""
        for m, r in zip(self.members, self._reflectors, strict=False):
            if r.error is not None:
                return f"member {m.name}: {r.error}"
            if not r.synced.is_set():
                return f"member {m.name}: not synced yet"
        if self.error is not None:
            return f"hub: {self.error}"
        if self._task is None:
            return "not started"
        return self.dead()

    async def reconcile(self) -> None:
        """One pass. The gateway's clusters come first: they depend on the members' pools only, so a hub
        that refuses (RBAC, down, a conflict) never leaves the gateway without them. Each import is
        written on its own: one refused does not hold back the others; the first failure is raised once
        every import was tried (the loop retries, backing off)."""
        self.reconciles += 1
        self._feed()
        if not self.writes:
            return
        if self.elected is not None and not self.elected():
            self._read_back = False  # a standby: its term will start from the hub's record
            return
        if not self._read_back:
            await self._read_hub()
            self._read_back = True
        failed: BaseException | None = None
        for key in sorted({*self.exported, *self.written}):
            # The gateway's clusters first again: the members' pools may have changed during the awaits
            # above (the read-back, an earlier import's writes), and the hub must not list an exporter
            # before the gateway that writes it is fed it (its own ``/readyz`` would say no cluster).
            self._feed()
            # The exporters: the members seen exporting it, and as the hub lists them, those this
            # controller must keep (``_held``: a member not seen yet, another install's exporter).
            held = self._held(key, self.written.get(key, ()))
            clusters = tuple(sorted({*self.exported.get(key, {}), *held}))
            try:
                if not clusters:
                    kept = await self._delete(key)
                    self.parent_written.pop(key, None)
                    if kept:  # the hub lists exporters to keep: the next pass writes around them
                        self.written[key] = kept
                        self._dirty.set()
                    else:
                        self.written.pop(key, None)
                        self.foreign.discard(key)
                        if key not in self.exported:
                            self.claimed.pop(key, None)
                    continue
                parent = self._parent_state(key)
                if self.written.get(key) != clusters or self.parent_written.get(key) != parent:
                    ours = tuple(sorted(self.exported.get(key, {})))
                    self.written[key] = await self._write(key, ours, parent)
                    self.parent_written[key] = parent
            except NotLeading:
                raise  # stepped down: the pass ends (``_loop``)
            except HUB_FAILED as e:
                log.warning("InferencePoolImport %s/%s not reconciled: %s: %s", *key, type(e).__name__, e)
                failed = failed or e
        await self._mark_members()
        if failed is not None:
            raise failed

    def _held(self, key: Key, listed: Sequence[str]) -> set[str]:
        """Of the exporters the hub lists for ``key``, those this controller keeps though none of its
        members is seen exporting it: a member not seen yet (not synced, refused, lost), a name that is
        not one of its members (another kvgate install writing the same hub under the same controller
        name), and, in an import another install created (``foreign``), a member name this controller
        never saw its member export (member names are each install's own: another install's ``east``
        is not ours to drop)."""
        members, unseen = {m.name for m in self.members}, self._unseen()
        claimed = self.claimed.get(key, set()) if key in self.foreign else None
        return {
            c for c in listed
            if c and (c in unseen or c not in members or (claimed is not None and c not in claimed))
        }  # fmt: skip

    def _theirs(self, key: Key, meta: Mapping[str, Any]) -> bool:
        """Whether the import ``key`` (``meta``: its metadata) was created for another install: a
        ``CREATED_FOR`` that is not this install's for this import."""
        created_for = (meta.get("annotations") or {}).get(CREATED_FOR)
        return created_for is not None and created_for != self._created_for(key)

    def _note_owner(self, key: Key, meta: Mapping[str, Any]) -> None:
        """``foreign`` for the import ``key`` as just read (``meta``: its metadata)."""
        if self._theirs(key, meta):
            self.foreign.add(key)
        else:
            self.foreign.discard(key)

    def _unseen(self) -> set[str]:
        """Members whose pools this controller has not listed yet (not synced: starting, refused, lost)."""
        return {m.name for m, r in zip(self.members, self._reflectors, strict=False) if not r.synced.is_set()}

    async def _read_hub(self) -> None:
        """``written`` / ``parent_written`` / ``foreign`` from the hub, in every namespace: every import
        carrying this controller's ``controllers[]`` entry (whoever wrote it: a previous leader, an
        earlier run, another install: ``foreign`` then, see ``_held``), and every import with no
        ``controllers[]`` entry at all whose managed-by label and ``CREATED_FOR`` name that very import
        and this install (created here, its entry never written). A label-only import with no
        ``CREATED_FOR`` (created by a kvgate before that annotation) is not taken: logged once, to be
        deleted by hand if stale."""
        rt = R.INFERENCE_POOL_IMPORT
        written: dict[Key, tuple[str, ...]] = {}
        parents: dict[Key, tuple[str, str] | None] = {}
        foreign: set[Key] = set()
        cont: str | None = None
        while True:
            q: dict[str, Any] = {"limit": 500} | ({"continue": cont} if cont else {})
            page = await self._hub().request("GET", rt.collection_path(None), query=q)
            for obj in page.get("items") or ():
                meta = obj.get("metadata") or {}
                key = (meta.get("namespace", "default"), meta.get("name", ""))
                ctrls = [c for c in (obj.get("status") or {}).get("controllers") or () if isinstance(c, dict)]
                mine = next((c for c in ctrls if c.get("name") == CONTROLLER_NAME), None)
                if mine is None:
                    if not ctrls:
                        self._say_orphan(key, meta)
                    if ctrls or not self._created_here(key, meta):
                        continue  # not one of ours (another controller's: nothing of ours to remove)
                    # Created by this controller (POST) whose entry was never written (the status PATCH
                    # refused, or its writer stepped down in between): ours, exported by nobody yet, so
                    # deleted unless something exports it, rather than left behind for good.
                    mine = {}
                written[key] = tuple(sorted(_exporting(mine)))
                parents[key] = self._parent_read(mine.get("parents"))
                if self._theirs(key, meta):
                    foreign.add(key)
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                break
        self.written, self.parent_written, self.foreign = written, parents, foreign

    def _say_orphan(self, key: Key, meta: Mapping[str, Any]) -> None:
        """Log, once per import, a label-only import with no ``CREATED_FOR``: left by a kvgate from before
        that annotation (killed between its create and its status write, as in a rolling upgrade). It
        is not taken (it could be a hand copy), so nothing deletes it."""
        if key in self._orphans_said or (meta.get("annotations") or {}).get(CREATED_FOR) is not None:
            return
        if not _managed(meta):
            return
        self._orphans_said.add(key)
        log.warning("InferencePoolImport %s/%s: kvgate's managed-by label, no %s annotation and no "
                    "controllers[] entry (left alone; delete it by hand if nothing should import it)",
                    *key, CREATED_FOR)  # fmt: skip

    def _created_for(self, key: Key) -> str:
        """``CREATED_FOR``'s value for the import ``key`` created by this install."""
        return f"{key[0]}/{key[1]} for {install_id(self.parent)}"

    def _created_here(self, key: Key, meta: Mapping[str, Any]) -> bool:
        """Whether the import ``key`` (``meta``: its metadata) was created by this install's controller:
        kvgate's managed-by label and ``CREATED_FOR`` naming this import and this install."""
        return _managed(meta) and (meta.get("annotations") or {}).get(CREATED_FOR) == self._created_for(key)

    def _parent_read(self, have: Any) -> tuple[str, str] | None:
        """This gateway's parent entry as the hub has it, in ``_parent_state``'s terms."""
        ref = None if self.parent is None else self.parent.as_status()
        entry = next((p for p in have or () if isinstance(p, dict) and p.get("parentRef") == ref), None)
        if ref is None or entry is None:
            return None
        resolved = _find(entry.get("conditions"), RESOLVED_REFS) or {}
        return (str(resolved.get("status", "")), str(resolved.get("message", "")))

    # ---- the Exported condition on member pools ------------------------------------------------
    def _wanted(self, member: str, key: Key, obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
        """(status, reason, message) of the Exported condition this pool should carry; None = none."""
        value = (obj.get("metadata", {}).get("annotations") or {}).get(EXPORT_ANNOTATION)
        if value is None:
            return None  # not (or no longer) exported: the condition goes
        if value != EXPORT_VALUE:
            return ("False", NOT_SUPPORTED, f'export value "{value}" is not supported; use "{EXPORT_VALUE}"')
        if member in self.written.get(key, ()):
            return ("True", EXPORTED, f"imported in the hub as InferencePoolImport {key[0]}/{key[1]}")
        return None  # asked for, not imported yet: written once the hub's import lists it

    @staticmethod
    def _ours(obj: Mapping[str, Any]) -> dict[str, Any] | None:
        for parent in (obj.get("status") or {}).get("parents") or ():
            if isinstance(parent, dict) and parent.get("controllerName") == CONTROLLER_NAME:
                return parent
        return None

    @staticmethod
    def _condition(parent: Mapping[str, Any] | None) -> dict[str, Any] | None:
        for cond in (parent or {}).get("conditions") or ():
            if isinstance(cond, dict) and cond.get("type") == EXPORTED:
                return cond
        return None

    async def _mark_members(self) -> None:
        clients = {m.name: m.client for m in self.members}
        for (member, key), obj in list(self.pools.items()):
            wanted = self._wanted(member, key, obj)
            have = self._condition(self._ours(obj))
            now_state = None if have is None else (have.get("status", ""), have.get("reason", ""))
            want_state = None if wanted is None else wanted[:2]
            if now_state == want_state or (member, key) in self.marked or member not in clients:
                continue
            try:
                await self._write_condition(clients[member], key, obj, wanted, have)
            except NotLeading:
                raise  # stepped down: the pass ends (``_loop``)
            except KubeError as e:  # a conflict or a refusal: the pool's next event brings it back
                log.warning("Exported condition on %s %s/%s not written: %s", member, *key, e)
                continue
            self.marked[(member, key)] = want_state

    async def _write_condition(
        self,
        client: KubeClient,
        key: Key,
        obj: Mapping[str, Any],
        wanted: tuple[str, str, str] | None,
        have: Mapping[str, Any] | None,
    ) -> None:
        ns, name = key
        meta = obj.get("metadata", {})
        ours = self._ours(obj)
        parents = [p for p in (obj.get("status") or {}).get("parents") or () if p is not ours]
        if wanted is not None:
            status, reason, message = wanted
            cond = _condition(EXPORTED, status, reason, message, have, meta.get("generation"))
            rt = R.INFERENCE_POOL_IMPORT
            parent_ref = {"group": rt.group, "kind": rt.kind, "namespace": ns, "name": name}
            parents.append({"parentRef": parent_ref, "controllerName": CONTROLLER_NAME, "conditions": [cond]})
        # status.parents is an atomic list: the whole list, guarded by the resourceVersion we read.
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": {"parents": parents}}
        await self._send(
            client,
            "PATCH",
            R.INFERENCE_POOL.item_path(ns, name) + "/status",
            body=body,
            content_type="application/merge-patch+json",
        )
        log.info("InferencePool %s/%s: Exported condition %s", ns, name, wanted[:2] if wanted else "removed")

    def _parent_state(self, key: Key) -> tuple[str, str] | None:
        """(ResolvedRefs status, message) of the followed import's parent entry; None for other imports."""
        if key != self.follow or self.parent is None:
            return None
        pools = sorted(self.exported.get(key, {}).items())
        if self.parent_mode_only:  # (the hub EPP: it can send only to a cluster's gateway)
            missing = [c for c, pool in pools if not _has_gateway(pool)]
            if missing:
                return ("False", f"no {GATEWAY_ANN} annotation on the pool exported by " + ", ".join(missing)
                                 + " (the gateway routes in Parent mode only)"
                                 + _unusable(pools, missing, (GATEWAY_ANN,)))  # fmt: skip
            if shared := _shared_gateways(pools):
                named = ", ".join(f"{c} is {first}'s" for c, first in shared.items())
                return ("False", f"the {GATEWAY_ANN} address of {named} (one cluster per gateway address: "
                                 "the gateway routes in Parent mode only)")  # fmt: skip
            return ("True", "every exporting cluster's gateway address is known")
        missing = [c for c, pool in pools if not _addressed(pool)]
        if missing:
            return ("False", f"no {GATEWAY_ANN} or {EPP_ANN} annotation on the pool exported by "
                             + ", ".join(missing)
                             + _unusable(pools, missing, (GATEWAY_ANN, EPP_ANN)))  # fmt: skip
        return ("True", "every exporting cluster's gateway or EPP address is known")

    async def _write(
        self, key: Key, clusters: tuple[str, ...], parent: tuple[str, str] | None, *, create: bool = True
    ) -> tuple[str, ...]:
        """Our ``controllers[]`` entry of the import (created first unless ``create`` is False: a 404
        then raises, as for an import deleted meanwhile). The exporters written are ``clusters`` (the
        members seen exporting it) plus those the import, as read just now, lists and this controller
        must keep (``_held``): taken from that read, not from the last read-back, so another install's
        exporter written since is not dropped, nor one it removed since written back. Returned."""
        ns, name = key
        rt = R.INFERENCE_POOL_IMPORT
        body = {
            "apiVersion": rt.api_version,
            "kind": rt.kind,
            "metadata": {"name": name, "namespace": ns, "labels": dict(MANAGED_BY),
                         "annotations": {CREATED_FOR: self._created_for(key)}},
        }  # fmt: skip
        obj: dict[str, Any] | None = None
        if create:
            try:
                obj = await self._send(self._hub(), "POST", rt.collection_path(ns), body=body)
            except KubeError as e:
                if e.status != 409:  # already there (created earlier, or by a previous run)
                    raise
            else:  # created, with no entry yet: if the PATCH below fails, the import is still ours
                self.written.setdefault(key, ())
        if obj is None:
            obj = await self._hub().request("GET", rt.item_path(ns, name))
        meta = obj.get("metadata", {})
        self._note_owner(key, meta)
        controllers = [c for c in (obj.get("status") or {}).get("controllers") or () if isinstance(c, dict)]
        mine = next((c for c in controllers if c.get("name") == CONTROLLER_NAME), {})
        clusters = tuple(sorted({*clusters, *self._held(key, _exporting(mine))}))
        entry: dict[str, Any] = {
            "name": CONTROLLER_NAME,
            "exportingClusters": [{"name": c} for c in clusters],
            "conditions": [
                _condition(ACCEPTED, "True", ACCEPTED, f"exported by {len(clusters)} cluster(s)",
                           _find(mine.get("conditions"), ACCEPTED), meta.get("generation")),
            ],
        }  # fmt: skip
        parents = self._parents(mine.get("parents"), parent, meta.get("generation"))
        if parents:
            entry["parents"] = parents
        controllers = [entry if c is mine else c for c in controllers] if mine else [*controllers, entry]
        # status.controllers is replaced whole by a merge patch: other controllers' entries are carried
        # over, and the resourceVersion read guards against a write in between (409: retried).
        await self._send(
            self._hub(),
            "PATCH",
            rt.item_path(ns, name) + "/status",
            body={"metadata": {"resourceVersion": meta.get("resourceVersion")},
                  "status": {"controllers": controllers}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        log.info("InferencePoolImport %s/%s: exported by %s%s", ns, name, ", ".join(clusters),
                 "" if parent is None else f"; parent ResolvedRefs {parent[0]}")  # fmt: skip
        return clusters

    def _parents(
        self, have: Any, parent: tuple[str, str] | None, generation: int | None
    ) -> list[dict[str, Any]]:
        """Our controller entry's parents: other gateways' entries kept, this gateway's set or removed."""
        ref = None if self.parent is None else self.parent.as_status()
        out = [p for p in have or () if isinstance(p, dict) and p.get("parentRef") != ref]
        if parent is None or ref is None:
            return out
        old = next((p for p in have or () if isinstance(p, dict) and p.get("parentRef") == ref), {})
        resolved, message = parent
        conds = old.get("conditions")
        out.append({
            "parentRef": ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                _condition(ACCEPTED, "True", ACCEPTED, "routed by the kvgate global gateway",
                           _find(conds, ACCEPTED), generation),
                _condition(RESOLVED_REFS, resolved, RESOLVED_REFS if resolved == "True" else INVALID_REF,
                           message, _find(conds, RESOLVED_REFS), generation),
            ],
        })  # fmt: skip
        return out

    async def _delete(self, key: Key) -> tuple[str, ...]:
        """Nothing exports it: the import goes, unless another controller has an entry in it (then only
        ours goes) or the hub's copy, read now, lists an exporter this controller must keep (a member not
        seen yet, or one of another install writing the same hub): those are returned, nothing written.
        Every write carries the resourceVersion read (the DELETE as its ``preconditions``): a write in
        between (a new leader's, another controller's) is a 409, and the decision is taken again on a
        fresh read. A refusal raises (retried by the loop)."""
        ns, name = key
        path = R.INFERENCE_POOL_IMPORT.item_path(ns, name)
        for attempt in range(1, DELETE_TRIES + 1):
            try:
                obj = await self._hub().request("GET", path)
            except KubeError as e:
                if e.status == 404:
                    return ()  # gone already
                raise
            meta = obj.get("metadata", {})
            rv = meta.get("resourceVersion")
            self._note_owner(key, meta)
            ctrls = [c for c in (obj.get("status") or {}).get("controllers") or () if isinstance(c, dict)]
            others = [c for c in ctrls if c.get("name") != CONTROLLER_NAME]
            mine = next((c for c in ctrls if c.get("name") == CONTROLLER_NAME), {})
            kept = tuple(sorted(self._held(key, _exporting(mine))))
            if kept:
                return kept
            try:
                # Another controller's entry, or the import another install created: only our entry
                # goes (that install, its creator, takes the import back at its read-back and decides).
                if others or key in self.foreign:
                    if len(others) < len(ctrls):
                        await self._send(
                            self._hub(), "PATCH", path + "/status",
                            body={"metadata": {"resourceVersion": rv}, "status": {"controllers": others}},
                            content_type="application/merge-patch+json",
                        )  # fmt: skip
                        whose = "another controller's kept" if others else "left to the install that made it"
                        log.info("InferencePoolImport %s/%s: no longer exported here; kvgate's entry "
                                 "removed (%s)", ns, name, whose)  # fmt: skip
                    return ()
                pre = {"uid": meta.get("uid"), "resourceVersion": rv}
                await self._send(self._hub(), "DELETE", path, body={
                    "kind": "DeleteOptions", "apiVersion": "v1",
                    "preconditions": {k: v for k, v in pre.items() if v is not None}})  # fmt: skip
            except KubeError as e:
                if e.status == 404:
                    return ()
                if e.status != 409 or attempt == DELETE_TRIES:
                    raise
                log.info("InferencePoolImport %s/%s changed since read (%s): read again", ns, name, e)
                continue
            log.info("InferencePoolImport %s/%s: no longer exported, deleted", ns, name)
            return ()
        raise AssertionError("unreachable")

    def clusters_for(self, key: Key) -> tuple[ClusterSpec, ...]:
        members = {m.name: m for m in self.members}
        out: list[ClusterSpec] = []
        pools = sorted(self.exported.get(key, {}).items())
        shared = _shared_gateways(pools) if self.parent_mode_only else {}
        for cluster, pool in pools:
            m = members[cluster]
            gateway, epp, health, aggregate = self._addresses(cluster, key, pool)
            if (first := shared.get(cluster)) is not None:
                self._say_shared(cluster, key, first, gateway)
                gateway = None  # (the hub EPP names one cluster per gateway address: the first by name)
            elif self._shared_said.pop((cluster, key), None) is not None:
                log.info("InferencePool %s/%s of member %s: its %s annotation is its own again", *key,
                         cluster, GATEWAY_ANN)  # fmt: skip
            if gateway is None and epp is None:
                continue  # exported, but kvgate has no address to reach it by
            out.append(
                ClusterSpec(
                    name=cluster,
                    aggregate=aggregate,
                    gateway=gateway,
                    epp=epp,
                    health=health,
                    rtt_ms=m.rtt_ms,
                    priority=m.priority,
                )
            )
        return tuple(out)

    def _addresses(self, member: str, key: Key, pool: Mapping[str, Any]) -> tuple[str | None, ...]:
        """The pool's gateway, EPP and health addresses and aggregate URL, each None when absent or not an
        address (a port outside 1-65535, a malformed host, an aggregate URL without http(s)://: the clusters
        file's rules, kvhub17, rev-e34-F1): such an annotation is ignored, logged (WARNING) once per value,
        naming it, as a clusters file refuses it."""
        out: list[str | None] = []
        for ann in (GATEWAY_ANN, EPP_ANN, HEALTH_ANN, AGGREGATE_ANN):
            address, why = _address(pool, ann)
            raw = _ann(pool, ann)
            if why is not None and raw is not None and self._bad_said.get((member, key, ann)) != raw:
                self._bad_said[(member, key, ann)] = raw
                log.warning("InferencePool %s/%s of member %s: its annotation %s is not an address "
                            "kvgate can use (%s): ignored", *key, member, ann, why)  # fmt: skip
            elif why is None:
                self._bad_said.pop((member, key, ann), None)
            out.append(address)
        return tuple(out)

    def _say_shared(self, member: str, key: Key, first: str, gateway: str | None) -> None:
        """A WARNING once per (member, import, gateway value): this member's gateway is ``first``'s."""
        said = f"{gateway} {first}"
        if self._shared_said.get((member, key)) == said:
            return
        self._shared_said[(member, key)] = said
        log.warning("InferencePool %s/%s of member %s: its annotation %s %r is the address of member %s's "
                    "(one address, however spelt): the hub EPP names one cluster per gateway address, so "
                    "%s is ignored (as a clusters file naming it twice is refused); give each cluster its "
                    "own gateway", *key, member, GATEWAY_ANN, gateway, first, member)  # fmt: skip

    def refeed(self) -> None:
        """Feed the cluster list again, changed or not (its receiver dropped what it was given)."""
        self._last_clusters = None
        self._feed()

    def _feed(self) -> None:
        if self.follow is None or self.on_clusters is None:
            return
        clusters = self.clusters_for(self.follow)
        if clusters == self._last_clusters or not clusters:
            return  # an empty list keeps the last one: a gateway with no clusters can only answer 503
        self._last_clusters = clusters
        self.on_clusters(ClustersConfig(clusters=clusters, ttl_s=self.ttl_s, refresh_s=self.refresh_s))


def _exporting(entry: Mapping[str, Any]) -> list[str]:
    """The exporter names a ``controllers[]`` entry lists (entries without a name string skipped)."""
    out = []
    for c in entry.get("exportingClusters") or ():
        name = c.get("name") if isinstance(c, dict) else None
        if isinstance(name, str) and name:
            out.append(name)
    return out


def _ann(pool: Mapping[str, Any], key: str) -> str | None:
    """A pool's address annotation: None when absent or empty (a Helm value left empty renders
    ``kvgate.io/gateway: ""``, which is no address: not routed to, not resolved)."""
    value = (pool.get("metadata", {}).get("annotations") or {}).get(key)
    return (value.strip() or None) if isinstance(value, str) else None


def _address(pool: Mapping[str, Any], key: str) -> tuple[str | None, str | None]:
    """A host:port annotation (``kvgate.io/gateway``, ``/epp``, ``/health``), or the ``/aggregate`` URL,
    checked as the clusters file checks its keys (kvhub17: before, read as it was, a port past 65535 or a
    malformed host reached the router and the probe; rev-e34-F1: a URL without its scheme reached the
    fetcher): (the address, None); (None, why: the error naming the annotation) when it is not one;
    (None, None) when absent or empty."""
    raw = _ann(pool, key)
    if raw is None:
        return None, None
    try:
        return (_aggregate_url(raw, key) if key == AGGREGATE_ANN else _hostport(raw, key)), None
    except ClustersError as e:
        return None, str(e)


def _unusable(
    pools: Sequence[tuple[str, Mapping[str, Any]]], names: Sequence[str], anns: Sequence[str]
) -> str:
    """For a condition's message: why the named clusters' address annotations, when set, are not usable."""
    why = [f"{c}: {e}" for c, pool in pools if c in names for a in anns if (e := _address(pool, a)[1])]
    return f"; not an address: {'; '.join(why)}" if why else ""


def _shared_gateways(pools: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """Exporters (in ``pools``' order) whose gateway annotation is literally an earlier one's address
    (``gateway_literal``: one IP address and port however spelt, one host name as looked up) -> that
    earlier exporter: the hub EPP's store is keyed by address, so one of them could never be picked
    (the clusters file's ``hub.hub_check`` refuses the same)."""
    seen: dict[tuple[str, int], str] = {}
    out: dict[str, str] = {}
    for cluster, pool in pools:
        gateway = _address(pool, GATEWAY_ANN)[0]
        if gateway is not None and (first := seen.setdefault(gateway_literal(gateway), cluster)) != cluster:
            out[cluster] = first
    return out


def _has_gateway(pool: Mapping[str, Any]) -> bool:
    return _address(pool, GATEWAY_ANN)[0] is not None


def _addressed(pool: Mapping[str, Any]) -> bool:
    return _address(pool, GATEWAY_ANN)[0] is not None or _address(pool, EPP_ANN)[0] is not None


def _find(conditions: Any, ctype: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if isinstance(c, dict) and c.get("type") == ctype), None)


def _condition(
    ctype: str, status: str, reason: str, message: str, have: Mapping[str, Any] | None, generation: int | None
) -> dict[str, Any]:
    """A metav1.Condition; its lastTransitionTime kept while the status does not change."""
    kept = have.get("lastTransitionTime") if have is not None and have.get("status") == status else None
    cond: dict[str, Any] = {
        "type": ctype, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": kept or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # fmt: skip
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond
