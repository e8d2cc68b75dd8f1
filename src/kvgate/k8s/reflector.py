"""A reflector: the client-go pattern that keeps a local copy of one resource collection current.

List (paged with ``limit``/``continue``), then watch from the list's resourceVersion with
``allowWatchBookmarks``; each event updates the copy and reaches the listeners. A dropped connection or
a watch timeout re-watches from the last resourceVersion seen (events or bookmarks), after back-off when
it failed. ``410 Gone`` (history compacted) relists and *reconciles*: listeners get DELETED for what
vanished meanwhile, ADDED/MODIFIED for the rest, so no stale object survives and none is missed. RBAC
errors (403) are logged once per change with the server's message and kept in ``error`` (``/readyz``
reports them) while the reflector relists with back-off (the list that succeeds clears it).

``last_sync`` is when the copy was last known to be in sync, on the injected ``clock``: a list completed (a
410's relist counts once it completes), a watch event or a bookmark that moved the resourceVersion (a repeat
is no proof, k8s18) read, or a watch the server itself ended at
its ``timeoutSeconds`` (a clean end of the stream, held for the whole timeout). ``age()`` is 0 while a watch
is open (answered 200, its stream not ended) and its liveness probe, below, is not answered 4xx: a quiet watch
may read nothing for its whole timeout (kube-apiserver bookmarks a watch only once the resource type's
resourceVersion moved past the watch's start: on a type nobody writes, with etcd's progress notify at its 10
min default, none at all), and it is in sync as client-go's informers count it. Every watch is bounded as
client-go bounds it: ``timeoutSeconds`` drawn per watch from [``min_watch_timeout_s``, twice that)
(client-go's ``minWatchTimeout``, 5 min), and a client-side deadline ``watch_deadline_margin_s`` above it. A
watch that reaches that deadline was never ended by the server (a stuck API server or proxy holding the
connection open): the reflector relists, and the list either completes (in sync) or fails (the copy ages:
stale). A watch that reads nothing for ``probe_after_s`` (60 s, timed from its last event or bookmark that
moved its resourceVersion: kube-apiserver's cacher repeats a bookmark's resourceVersion every minute while the
type stands still, which proves no progress, k8s18) is probed: one consistent ``LIST ?limit=1`` of the
collection with the watch's own selectors (no resourceVersion), on the injected ``sleep``; answered 2xx, its
first object is checked against the copy: missing or at another resourceVersion, the copy is behind and the
reflector relists (``behind``), else the watch goes on and the copy counts as in sync as of the probe; a 4xx
(429, 403) proves nothing: the watch goes on (no relist: a LIST storm on a throttling server), the copy is no
longer credited (``age()`` grows from the last proof) and the next probe waits the server's Retry-After; a 5xx
or a connection error (refused, reset) is asked again once, ``PROBE_RETRY_S`` (1 s) later (a server restarting
behind a load balancer); unanswered within ``probe_timeout_s`` (10 s), or a second failure in a row, the watch
ends and the reflector relists (``stuck``). A probe answered 2xx at a list resourceVersion past the watch's is
followed by a catch-up check (``CATCH_UP_TIMEOUT_S``, k8s17): a second short watch from the watch's last
resourceVersion; a change it replays at or below the probe's resourceVersion that the open watch still has not
read ``probe_timeout_s`` later (a proxy holding that one watch; or the second watch answered 410 Gone, the
watch cache past the watch's resourceVersion while it read nothing, k8s18), or the second watch not ended by
the server (a stuck watch cache), ends the watch and relists (``missed``); nothing replayed (only other kinds
changed: a list's resourceVersion is etcd's global one) is no reason to relist. So a stuck but connected API
server is found within ~70 s of the last proof, and a watch held stuck while the server answers within ~70 s
of a change it should have delivered or of the watch cache leaving its resourceVersion behind; an unreachable
one (refused, reset, TCP keepalive) at once. A watch held open that read
nothing and ended early (a proxy's idle cut or close) proves nothing either: relist. A watch that opens and
then fails (an ``ERROR`` event, an empty stream or a close at once) proves nothing: ``error`` takes its cause
again (an open watch clears the last failure's, as it zeroes the age: else a quiet type kept an outage's error
in /readyz for up to ~10 min after the server came back). A relist that follows a watch refused as it opened
(403, 404: RBAC granting list but not watch) brings the copy up to date but counts only once a watch opens
again: until then the error, the age and the growing back-off stay (else list, 403, 0.1 s, list... for good).
``age()`` is how long ago. ``kvgate.k8s.staleness`` turns that into a gauge, log lines and, if asked,
not-ready.

Generic over any group/version/plural (``ResourceType``), CRDs included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from kvgate.aio import stop_to_the_end
from kvgate.k8s.client import KubeClient, KubeError, error_from
from kvgate.k8s.resources import ResourceType
from kvgate.k8s.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
Listener = Callable[[str, Obj], None]  # (ADDED | MODIFIED | DELETED, object)

# The reflectors running in this process (started, not stopped): the staleness gauge reads them.
RUNNING: weakref.WeakSet[Reflector] = weakref.WeakSet()


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


@dataclass(slots=True)
class Backoff:
    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2
    _next: float = 0.0

    def next(self, rng: random.Random) -> float:
        self._next = self.initial if self._next == 0 else min(self.maximum, self._next * self.factor)
        return self._next * (1 + self.jitter * rng.random())

    def reset(self) -> None:
        self._next = 0.0


# No silence limit on a watch (session 15 had one, 90 s, then a relist; review s15-k8s F1): kube-apiserver
# promises no bookmark cadence. Its cacher bookmarks a watch (``allowWatchBookmarks``) about every minute
# only with the type's last processed resourceVersion, and only once that is above the watch's start: a
# quiet type gets none until it changes or an etcd progress notification moves the cache (every 5 s where
# kubeadm, GKE or kubespray set ``--experimental-watch-progress-notify-interval``; etcd's default 10 min).
# client-go's reflector asks for ``timeoutSeconds`` = minWatchTimeout (5 min) x [1, 2) per watch, spreading
# the re-watches; kube-apiserver ends the watch then (it ignores ``?timeout=`` on a watch and uses only
# ``timeoutSeconds``). The client's own deadline is this margin above it: the server's end comes first.
MIN_WATCH_TIMEOUT_S = 300
WATCH_DEADLINE_MARGIN_S = 15.0
# A watch the server ended this close to its timeoutSeconds (measured from when it was sent; a tenth of it
# for a short one) was ended by the server's timer: the server ran it to its end, in sync (timers and clock
# reads may round a little early).
TIMEOUT_END_SLACK_S = 1.0
# A watch held open this long worked for a while, however it ended: its end waits the initial back-off
# (a cut, a timeout). One that ends sooner without an event (an ERROR at once, an empty stream) backs off
# further each time instead of re-opening every 0.1 s.
HELD_OPEN_S = 1.0
# The liveness probe of an open watch (session 16): after this long without an event or bookmark (timed
# from the last one, or from the watch's start), one consistent ``LIST ?limit=1`` (no resourceVersion: a
# quorum read; ``resourceVersion=0`` would be served by the watch cache, which ignores ``limit`` before
# KEP-4988, a full list) with the watch's own selectors (review s16-k8s F1: RBAC ``resourceNames`` admits a
# list only with its ``metadata.name=`` field selector, which the registry reads as one key; a label
# selector makes the server read until the first match), answered within ``PROBE_TIMEOUT_S``. A probe
# unanswered (or failed twice in a row: a 5xx, a connection error) while the watch stays silent ends the
# watch and relists: a stuck-but-connected API server is found within PROBE_AFTER_S + PROBE_TIMEOUT_S of
# the last proof instead of the watch's client deadline (~10 min 15 s). Cost: one one-object LIST per
# quiet watch per minute, none while events or bookmarks come.
PROBE_AFTER_S = 60.0
PROBE_TIMEOUT_S = 10.0
# A probe answered 5xx (an API server restarting behind a load balancer: 502/503; one whose etcd timed out
# a request: 504) is asked again once, this long after (or after the answer's Retry-After, at most
# PROBE_TIMEOUT_S), before the watch ends and relists: a second failure in a row (5xx, no answer, the
# connection; with no answer between: an event, a 2xx or a 4xx forgets the first, fixk8s18) relists (k8s17;
# before, one transient 5xx relisted the whole collection). A probe whose
# connection failed (refused, reset, closed before the answer: the load balancer's new connection while
# the API server behind it restarts, the open watch's connection still up) is asked again the same way
# (k8s18; before, it relisted at once).
PROBE_RETRY_S = 1.0
# A probe answered 2xx whose list resourceVersion is past the watch's last one (``resource_version``) is
# followed by a *catch-up check* (k8s17): a second, short watch of the same selection from the watch's
# last resourceVersion (``timeoutSeconds`` CATCH_UP_TIMEOUT_S). A list's resourceVersion is etcd's global
# revision: any write to any kind moves it (checked on a real kube-apiserver 1.20.2: a limit=1 pod list's
# resourceVersion followed ConfigMap writes), so it moving is no sign of a stuck watch by itself. The second
# watch is: the watch cache replays every change of the selection after that resourceVersion at once, so a
# change at or below the probe's resourceVersion that the open watch has not delivered shows that watch stuck
# (a proxy holding that one connection while the server answers new ones), and a second watch the server does
# not end within ``probe_timeout_s`` shows the server's watches stuck (a stuck watch cache). Either ends the
# open watch and relists, the first only if the open watch still reads nothing ``probe_timeout_s`` later (a
# late delivery is no stuck watch). Nothing of the selection changed (other kinds, other namespaces): the
# check reads nothing and the server ends it: no relist. Its resourceVersion gone from the watch cache (410
# Gone: the type moved on past the cache's window, at least 100 of its changes and 75 s, while the open watch
# read nothing that moved it, where a delivering watch gets the cacher's bookmark of the moved type about
# every minute) counts as a missed change (k8s18; before, inconclusive): relisted if the open watch still
# reads nothing ``probe_timeout_s`` later. (One server's reading: behind a load balancer an API server
# started after the watch's resourceVersion answers 410 for it too, one relist per quiet watch per restart:
# ``_gone``.) A refusal, another error or no answer: inconclusive (the client
# deadline stays the bound). Cost: one one-second watch from the watch cache per probe whose list moved past
# the watch.
CATCH_UP_TIMEOUT_S = 1
# Probes answered 4xx (429 from API Priority and Fairness, whose queues fill on a server with stuck storage
# and on a merely overloaded one alike; 403/401) prove nothing: the next one waits the server's Retry-After
# (at least PROBE_TIMEOUT_S) and the copy is no longer credited: ``age()`` grows from the last proof, so
# staleness shows (review s16-k8s F5). They never end the watch (review s16-fixes-b KS1: three in a row
# relisted, a full LIST from every quiet, healthy watch every ~80 s of an overload; client-go backs off).


@dataclass(frozen=True, slots=True)
class Keepalive:
    """TCP keepalive on the watch's socket: a peer whose TCP is gone without a FIN or RST (a dropped
    NAT/conntrack entry, a vanished host or load balancer) is noticed after ``idle_s + interval_s * count``
    (30 s by default; 15 s when the peer answers the first probe with a RST) instead of the watch's deadline.
    client-go gets the same from HTTP/2 pings (read idle 30 s + ping timeout 15 s)."""

    idle_s: int = 15
    interval_s: int = 5
    count: int = 3

    @property
    def detect_s(self) -> int:
        return self.idle_s + self.interval_s * self.count

    def apply(self, sock: Any) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux (and recent macOS); elsewhere the OS defaults hold
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.idle_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, self.interval_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.count)


class _Gone(Exception):
    pass


class _Overran(Exception):
    """A watch the server did not end by its ``timeoutSeconds``: ended at the client's deadline."""


class _Cut(Exception):
    """A watch that read events, held open, then its connection cut (no in-stream error): re-watch."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """A probe that failed but may be asked again once (``PROBE_RETRY_S``): answered 5xx (with its
    Retry-After), or its connection failed (refused, reset, closed before the answer: no Retry-After)."""

    why: str
    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class _Unproven4xx:
    """A probe the server answered without proving its storage (4xx): why, and its Retry-After."""

    why: str
    retry_after_s: float | None


class _ProbeRefused(Exception):
    def __init__(self, error: KubeError, retry_after_s: float | None) -> None:
        super().__init__(str(error))
        self.error, self.retry_after_s = error, retry_after_s


class _Behind(Exception):
    """An open watch whose liveness probe's answer showed the copy behind (a newer object): relist."""


class _Stuck(Exception):
    """An open watch that read nothing while the API server did not answer its liveness probe: relist."""


class _Unproven(Exception):
    """A watch held open that read nothing and ended before its ``timeoutSeconds`` (a proxy's idle cut or
    close): nothing says the server is alive: relist."""


class Reflector:
    def __init__(
        self,
        client: KubeClient,
        rt: ResourceType,
        *,
        namespace: str | None = None,
        cluster: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        min_watch_timeout_s: int = MIN_WATCH_TIMEOUT_S,
        watch_deadline_margin_s: float = WATCH_DEADLINE_MARGIN_S,
        list_timeout_s: float = 30.0,
        keepalive: Keepalive | None = Keepalive(),  # frozen: one shared default is safe
        backoff: Backoff | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        probe_after_s: float | None = PROBE_AFTER_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        """``clock`` and ``sleep`` are one time (the probe's period and deadline wait on ``sleep``, the
        copy's age is read on ``clock``); ``probe_after_s`` None: no liveness probe."""
        self.client, self.rt = client, rt
        self.clock, self.sleep = clock, sleep
        self.probe_after_s, self.probe_timeout_s = probe_after_s, probe_timeout_s
        self.namespace = namespace
        self.cluster = cluster  # which API server, where a process watches several (the hub's members)
        self.label_selector, self.field_selector = label_selector, field_selector
        self.page_size, self.list_timeout_s = page_size, list_timeout_s
        self.min_watch_timeout_s, self.watch_deadline_margin_s = min_watch_timeout_s, watch_deadline_margin_s
        self.keepalive = keepalive
        self.backoff = backoff or Backoff()
        self._rng = random.Random(seed)
        self.items: dict[Key, Obj] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        # called (no arguments) when ``error`` changes: a watcher whose use of the copy depends on it
        # (discovery drops a refused objective/rewrite group's objects: review s26-rev-fixqa26a R1)
        self._error_listeners: list[Callable[[], None]] = []
        self._error: str | None = None
        # Counters tests and /readyz read: lists (initial + relists), watches opened, 410s seen.
        self.lists = 0
        self.watches = 0
        self.gone = 0
        self.bookmarks = 0
        self.events = 0  # watch events and bookmarks received
        # watch events and bookmarks that moved the resourceVersion: what the liveness probe counts as the
        # watch's proof (a bookmark repeating it proves no progress of the watch cache: k8s18)
        self.proofs = 0
        self.bookmarks_repeated = 0  # bookmarks at the watch's resourceVersion already: no proof
        self.overruns = 0  # watches the server did not end by their timeoutSeconds (the client's deadline)
        self.unproven = 0  # watches held open, read nothing, ended early (a proxy's cut): relisted
        self.probes = 0  # liveness probes answered (2xx) while a watch was silent
        self.stuck = 0  # silent watches ended because the API server did not answer their probe: relisted
        self.behind = 0  # silent watches ended because their probe's answer showed the copy behind
        self.probes_refused = 0  # probes answered 401/403 (the probe cannot work with these credentials)
        self.probes_unproven = 0  # probes answered 4xx (429, 401/403, ...): no credit, the watch goes on
        self.probes_retried = 0  # probes answered 5xx or failed to connect, asked again once (PROBE_RETRY_S)
        self.catch_ups = 0  # catch-up checks (second watches from the watch's resourceVersion) made
        self.missed = 0  # open watches ended because a catch-up check showed them stuck: relisted
        self._probe_refusal_logged = False
        self._behind_now = False  # this watch's probe showed the copy behind
        self._heard_at = 0.0  # clock() at the watch's last proof (``proofs``), or its probe's start
        self._stuck_why: str | None = None  # why this watch's probe ended it
        self._second_open = False  # the catch-up check's watch answered 200 (``_second_watch``)
        self._opaque_rv_said = False  # a resourceVersion that is not an integer was logged (``_int_rv``)
        self.last_sync: float | None = None  # clock() when last known in sync (None: never listed)
        # A watch refused as it opened (403/404): the relist that follows counts only once a watch opens.
        self._watch_refused = False
        self._listed_at: float | None = None  # such a relist's time, credited when a watch opens again
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._opening = False  # a watch request sent, its answer not yet 200
        self._watching = False  # a watch answered 200, its stream not ended: in sync (``age()`` 0)
        # While the open watch's probes are answered without proof (4xx): its last proof (``age()`` from it)
        self._uncredited_since: float | None = None

    @property
    def name(self) -> str:
        scope = f" in {self.namespace}" if self.namespace else ""
        where = f" of cluster {self.cluster}" if self.cluster else ""
        return f"{self.rt.plural}.{self.rt.group or 'core'}/{self.rt.version}{scope}{where}"

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_error_listener(self, listener: Callable[[], None]) -> None:
        self._error_listeners.append(listener)

    @property
    def error(self) -> str | None:
        """Why the last request failed (``403 ...``, ``404 ...``, a lost connection), until a success."""
        return self._error

    @error.setter
    def error(self, message: str | None) -> None:
        if message == self._error:
            return
        self._error = message
        for listener in list(self._error_listeners):
            try:
                listener()
            except Exception:  # as ``_emit``: one broken listener must not stop the watch
                log.exception("reflector %s: error listener failed", self.name)

    def age(self) -> float | None:
        """Seconds since the copy was last known to be in sync (None before its first list; 0 while a watch
        is open, unless its liveness probes are answered without proof, 4xx: then since its last proof, an
        event, its start or an answered probe; see the module's docstring)."""
        if self.last_sync is None:
            return None
        if self._watching and self._uncredited_since is not None:
            return max(0.0, self.clock() - self._uncredited_since)
        return 0.0 if self._watching else self.clock() - self.last_sync

    def _synced_now(self) -> None:
        """A real success (a list completed, a watch event or bookmark read, a watch held open that ended
        without an in-stream error): fresh, no error, the back-off starts over."""
        self.last_sync = self.clock()
        self._uncredited_since = None
        self.error = None
        self.backoff.reset()
        self._listed_at = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"reflector {self.name}")
            RUNNING.add(self)

    async def stop(self) -> None:
        """Stop the watch (an error it had ended on is logged). The caller's own cancellation is raised:
        ``suppress(CancelledError)`` around ``await task`` swallowed one landing while the watch ended;
        once the stop ended (``stop_to_the_end``)."""
        await stop_to_the_end(self._stop(), f"reflector {self.name}: stopping", log)

    async def _stop(self) -> None:
        RUNNING.discard(self)
        if self._task is not None:
            await cancel_and_wait(self._task, f"reflector {self.name}: the watch", log)
            self._task = None

    async def wait_synced(self, within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):  # (not wait_for: see kvgate.k8s.tasks.wait_event)
            await self.synced.wait()

    def _emit(self, etype: str, obj: Obj) -> None:
        for listener in list(self._listeners):
            try:
                listener(etype, obj)
            except Exception:  # one broken listener must not stop the others or the watch
                log.exception("reflector %s: listener failed on %s", self.name, etype)

    def _fail(self, message: str) -> None:
        if message != self.error:
            level = logging.ERROR if message.startswith("403") else logging.WARNING
            log.log(level, "reflector %s: %s", self.name, message)
        self.error = message

    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                loop = asyncio.get_running_loop()
                started, events = loop.time(), self.events
                await self._watch()
                # A clean end (timeoutSeconds, server closed the stream): watch again at once, unless
                # the stream ended at once and empty (a proxy cutting it): then back off, never spin.
                if self.events == events and loop.time() - started < HELD_OPEN_S:
                    await asyncio.sleep(self.backoff.next(self._rng))
            except _Stuck as e:
                self.stuck += 1
                self._fail(str(e))
                need_list = True
                await asyncio.sleep(self.backoff.next(self._rng))
            except _Behind as e:
                log.warning("reflector %s: %s", self.name, e)
                need_list = True
                await asyncio.sleep(self.backoff.next(self._rng))
            except _Overran as e:
                self.overruns += 1
                log.info("reflector %s: the API server did not end the watch at its timeoutSeconds (%s s); "
                         "ended it and relisting", self.name, e)  # fmt: skip
                need_list = True
                await asyncio.sleep(self.backoff.next(self._rng))
            except _Unproven:
                self.unproven += 1
                log.debug("reflector %s: quiet watch cut before its timeout; relisting", self.name)
                need_list = True
                await asyncio.sleep(self.backoff.next(self._rng))
            except _Cut:
                log.debug("reflector %s: watch connection cut after it was held; re-watching", self.name)
                await asyncio.sleep(self.backoff.next(self._rng))
            except _Gone:
                self.gone += 1
                log.info("reflector %s: resourceVersion %s is gone (410); relisting", self.name,
                         self.resource_version)  # fmt: skip
                need_list = True
            except KubeError as e:
                if e.status == 403:
                    self._fail(f"403 Forbidden (RBAC): {e.message}; kvgate needs list and watch on "
                               f"{self.rt.plural} in API group {self.rt.group!r}")  # fmt: skip
                else:
                    self._fail(str(e))
                # 403: relist, which brings the copy up to date after the gap. When the watch was the
                # request refused as it opened, that list counts (clears the error, resets the back-off,
                # fresh) only once a watch opens again (``_watch``): RBAC granting list but not watch
                # must back off to the cap, not relist every 0.1 s looking fresh.
                if not need_list and e.status in (403, 404) and self._opening:
                    self._watch_refused = True
                need_list = need_list or e.status in (403, 404, 410)
                await asyncio.sleep(self.backoff.next(self._rng))
            except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as e:
                self._fail(f"connection to {self.client.host} lost: {type(e).__name__}: {e}")
                await asyncio.sleep(self.backoff.next(self._rng))

    def _query(self) -> dict[str, Any]:
        q: dict[str, Any] = {}
        if self.label_selector:
            q["labelSelector"] = self.label_selector
        if self.field_selector:
            q["fieldSelector"] = self.field_selector
        return q

    async def _list(self) -> None:
        path = self.rt.collection_path(self.namespace)
        fresh: dict[Key, Obj] = {}
        cont: str | None = None
        while True:
            q = {**self._query(), "limit": self.page_size}
            if cont:
                q["continue"] = cont
            try:
                page = await self.client.request("GET", path, q, timeout_s=self.list_timeout_s)
            except KubeError as e:
                if e.status == 410 and cont:  # the continue token expired mid-list: start over
                    fresh, cont = {}, None
                    continue
                raise
            for item in page.get("items") or []:
                # List items omit apiVersion/kind; listeners get whole objects.
                item.setdefault("apiVersion", self.rt.api_version)
                item.setdefault("kind", self.rt.kind)
                fresh[key_of(item)] = item
            meta = page.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                self.resource_version = meta.get("resourceVersion")
                break
        self.lists += 1
        self._reconcile(fresh)
        if self._watch_refused:  # counts once a watch opens again (see ``run``)
            self._listed_at = self.clock()
        else:
            self._synced_now()
        self.synced.set()

    def _reconcile(self, fresh: dict[Key, Obj]) -> None:
        """Replace the copy with a full list: what vanished is DELETED, what is new or changed is sent."""
        old = self.items
        self.items = fresh
        for k, obj in old.items():
            if k not in fresh:
                self._emit("DELETED", obj)
        for k, obj in fresh.items():
            prev = old.get(k)
            if prev is None:
                self._emit("ADDED", obj)
            elif _rv(prev) != _rv(obj):
                self._emit("MODIFIED", obj)

    def _watch_timeout(self) -> int:
        """This watch's ``timeoutSeconds``: client-go's ``minWatchTimeout * (rand.Float64() + 1.0)``,
        truncated to whole seconds (the field is an integer)."""
        return max(1, int(self.min_watch_timeout_s * (self._rng.random() + 1.0)))

    async def _watch(self) -> None:
        timeout_s = self._watch_timeout()
        q = {
            **self._query(), "watch": "true", "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version or "", "timeoutSeconds": timeout_s,
        }  # fmt: skip
        # The client's deadline, a margin above timeoutSeconds, bounds the whole request: a watch the
        # server does not end (a stuck server or proxy that keeps it open) ends too.
        sent = asyncio.get_running_loop().time()
        deadline = asyncio.timeout_at(sent + timeout_s + self.watch_deadline_margin_s)
        self._stuck_why, self._behind_now = None, False
        probes: asyncio.Task[None] | None = None
        try:
            async with deadline:
                if self.probe_after_s is not None:
                    probes = asyncio.create_task(self._probes(deadline), name=f"reflector {self.name}: probe")
                await self._stream(q, sent, timeout_s)
        except TimeoutError:
            if not deadline.expired():
                raise
            if self._behind_now and self._stuck_why is not None:
                raise _Behind(self._stuck_why) from None
            if self._stuck_why is not None:
                raise _Stuck(self._stuck_why) from None
            raise _Overran(timeout_s) from None
        finally:
            if probes is not None:
                probes.cancel()
                await asyncio.wait([probes])
                if not probes.cancelled() and (exc := probes.exception()) is not None:
                    log.error("reflector %s: the liveness probe failed: %r", self.name, exc, exc_info=exc)

    async def _probes(self, deadline: asyncio.Timeout) -> None:
        """While the watch (being opened or open) reads nothing for ``probe_after_s`` (timed from its last
        event or bookmark, or from its start), ask the API server a cheap question (``_probe``). Answered
        2xx with nothing that shows the copy behind: in sync as of the probe (``last_sync``), the next probe
        ``probe_after_s`` after it. Its answer showing the copy behind (``_behind``): the watch ends and the
        caller relists. Answered without proof (4xx: 429, 403, ...): no credit (``age()`` grows from the
        last proof while the watch stays open), the next probe after the server's Retry-After (at least
        ``probe_timeout_s``); never a relist (review s16-fixes-b KS1). A 5xx is asked again once,
        ``PROBE_RETRY_S`` later (or the answer's Retry-After, at most ``probe_timeout_s``; k8s17), and so is
        a connection error (k8s18). No answer in time, or a second failure in a row (a 5xx, a connection
        error, no answer; a 4xx answer between two breaks the row: fixk8s18): the watch ends
        (``deadline`` expired at once, ``_stuck_why`` saying why) and the caller relists."""
        assert self.probe_after_s is not None
        seen = self.proofs
        quiet_since = proof = self._heard_at = self.clock()
        self._uncredited_since = None
        due = quiet_since + self.probe_after_s
        unproven = 0  # the 4xx answers in a row since the last event or proof
        failed: _Failed | None = None  # a 5xx or connection error since the last answer or proof, asked again
        while True:
            if self.proofs != seen:  # the watch moved on: the server is alive; time from then
                seen, unproven, failed = self.proofs, 0, None
                quiet_since = proof = self._heard_at
                due = quiet_since + self.probe_after_s
            wait = due - self.clock()
            if wait > 0:
                await self.sleep(wait)
                continue
            sent = self.clock()
            answer = await self._probe()
            if self.proofs != seen:
                continue
            if isinstance(answer, _Unproven4xx):
                unproven += 1
                failed = None  # (the server answered: a failure before it and one after are not in a row)
                self.probes_unproven += 1
                self._uncredited_since = proof  # (no credit: the copy's age grows from the last proof)
                if unproven == 1:
                    log.info("reflector %s: the liveness probe was answered without proof (%s): the watch "
                             "stays open, the copy is not credited (its age grows from %g s ago) until an "
                             "event or an answered probe; the next probe after the server's Retry-After",
                             self.name, answer.why, self.clock() - proof)  # fmt: skip
                due = sent + max(answer.retry_after_s or 0.0, self.probe_timeout_s)
                continue
            if isinstance(answer, dict):
                behind = self._behind(answer)
                if behind is None and self._watching and self._moved_past(answer):
                    behind = await self._catch_up(answer)
                    if self.proofs != seen:  # the watch read something meanwhile: it delivers
                        continue
                    if behind is not None:  # a late delivery is no stuck watch: give it the probe's time
                        await self.sleep(self.probe_timeout_s)
                        if self.proofs != seen:
                            continue
                        self.missed += 1
                        self._stuck_why = f"{behind}; relisting"
                        self._behind_now = True
                        deadline.reschedule(asyncio.get_running_loop().time())
                        return
                if behind is None:
                    self.probes += 1
                    if self._watching:  # answered while the watch is open: in sync as of the probe's send
                        self.last_sync = max(self.last_sync or sent, sent)
                    self._uncredited_since = None
                    unproven, failed, proof, due = 0, None, sent, sent + self.probe_after_s
                    continue
                self.behind += 1
                self._stuck_why = f"the liveness probe's answer shows the copy behind: {behind}; relisting"
                self._behind_now = True
                deadline.reschedule(asyncio.get_running_loop().time())
                return
            if isinstance(answer, _Failed) and failed is None:
                failed = answer  # (a transient 5xx or connection error: asked again once, shortly)
                self.probes_retried += 1
                wait_s = min(max(answer.retry_after_s or 0.0, PROBE_RETRY_S), self.probe_timeout_s)
                log.info("reflector %s: the liveness probe failed (%s); asking again in %g s before "
                         "relisting", self.name, answer.why, wait_s)  # fmt: skip
                due = self.clock() + wait_s
                continue
            if isinstance(answer, _Failed):
                answer = answer.why
            again = f" (the probe before it: {failed.why})" if failed is not None else ""
            why = f"the API server did not answer a liveness probe: {answer}{again}"
            silent = self.clock() - quiet_since
            self._stuck_why = f"{why} while the watch read nothing for {silent:g} s; relisting"
            deadline.reschedule(asyncio.get_running_loop().time())
            return

    def _int_rv(self, rv: str | None, what: str) -> int | None:
        """``rv`` as etcd's integer, else None: the API contract makes resourceVersions opaque (an
        aggregated API server's may not be integers), and the catch-up check compares them as integers, so
        it is off where they are not: said once per reflector (INFO, naming the resource), never a relist
        (review s17-k8s F5)."""
        try:
            return int(rv or "")
        except ValueError:
            if not self._opaque_rv_said:
                self._opaque_rv_said = True
                log.info("reflector %s: %s resourceVersion %r is not an integer: the liveness probe's "
                         "catch-up check (which compares resourceVersions as etcd's integers) is off for "
                         "%s while it is not; the probe itself goes on", self.name, what, rv,
                         self.rt.plural)  # fmt: skip
            return None

    def _moved_past(self, page: Obj) -> bool:
        """The probe's list resourceVersion is past the watch's last one (both integers, as etcd's; else
        no check: ``_int_rv``)."""
        listed = self._int_rv((page.get("metadata") or {}).get("resourceVersion"), "the probe's list")
        if listed is None:
            return False
        since = self._int_rv(self.resource_version, "the watch's")
        return since is not None and listed > since

    async def _catch_up(self, page: Obj) -> str | None:
        """The catch-up check (``CATCH_UP_TIMEOUT_S``): a second watch of the selection from the open
        watch's last resourceVersion; what it shows the open watch missing (a change at or below the probe's
        list resourceVersion, or the second watch itself not ended by the server in ``probe_timeout_s``),
        else None (nothing missed, or inconclusive)."""
        since, listed = self.resource_version, int(page["metadata"]["resourceVersion"])
        self.catch_ups += 1
        check = asyncio.create_task(self._second_watch(since or "", listed))
        timer: asyncio.Future[None] = asyncio.ensure_future(self.sleep(self.probe_timeout_s))
        both: list[asyncio.Future[Any]] = [check, timer]
        try:
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not check.done():
                check.cancel()
            await asyncio.wait(both)
        if check.cancelled():
            if self._second_open:
                return (f"a second watch from resourceVersion {since} (timeoutSeconds {CATCH_UP_TIMEOUT_S}) "
                        f"was not ended by the server within {self.probe_timeout_s:g} s while the watch "
                        f"read nothing: the server's watches are stuck")  # fmt: skip
            log.debug("reflector %s: catch-up check unanswered (inconclusive)", self.name)
            return None
        e = check.exception()
        if e is None:
            return check.result()
        if isinstance(e, (KubeError, aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError)):
            log.debug("reflector %s: catch-up check failed (inconclusive): %r", self.name, e)
            return None
        raise e

    async def _second_watch(self, since: str, listed: int) -> str | None:
        """The catch-up check's watch: the first change it replays at or below ``listed`` (the open watch
        should have delivered it), or its 410 Gone (``_gone``); None when it ends without one (a later change
        is not the open watch's to have read yet; another ERROR: inconclusive)."""
        q = {**self._query(), "watch": "true", "resourceVersion": since, "timeoutSeconds": CATCH_UP_TIMEOUT_S}
        read = aiohttp.ClientTimeout(sock_connect=10, sock_read=None)
        self._second_open = False
        resp = await self.client.open("GET", self.rt.collection_path(self.namespace), q, timeout_s=read)
        async with resp:
            if resp.status == 410:  # (the watch cache answers an ERROR event; an etcd-backed watch may not)
                return self._gone(since, error_from(resp.status, await resp.read()).message)
            if not 200 <= resp.status < 300:
                raise error_from(resp.status, await resp.read())
            self._second_open = True
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    ev = orjson.loads(line)
                    etype, obj = ev.get("type"), ev.get("object") or {}
                    if etype not in ("ADDED", "MODIFIED", "DELETED"):
                        if etype == "ERROR":
                            if obj.get("code") == 410:  # the watch cache no longer holds ``since``
                                return self._gone(since, str(obj.get("message", "")))
                            log.debug("reflector %s: catch-up check: %s (inconclusive)", self.name, obj)
                            return None
                        continue
                    rv = self._int_rv(_rv(obj), "a replayed event's")
                    if rv is None:  # (inconclusive)
                        return None
                    if rv > listed:  # newer than the probe: not yet the open watch's to have read
                        return None
                    name = "/".join(part for part in key_of(obj) if part)
                    return (f"the watch missed {etype} {name} (resourceVersion {rv}): a second watch from "
                            f"its resourceVersion {since} replayed it at once, the server's list is at "
                            f"{listed}")  # fmt: skip
        return None

    def _gone(self, since: str, message: str) -> str:
        """Why a catch-up check answered 410 Gone shows the open watch stuck (k8s18): the watch cache no
        longer holds the watch's resourceVersion, so the type moved on past the cache's window since then
        (kube-apiserver 1.20 keeps at least 100 events of a type and drops one only once it is over 75 s old,
        ``eventFreshDuration``, or past 102,400), while the watch read nothing that moved it. A watch that
        delivers reads the cacher's bookmark of the moved type about every minute (each a proof:
        ``_on_event``); this one's next is owed within the probe's grace. That holds for one API server:
        behind a load balancer the check may reach another, and one (re)started after ``since`` answers 410
        for it though the type stood still (its cache begins at its own start), so each quiet watch whose
        check lands there relists once after an API-server restart (review s18-k8s L1; docs/kubernetes.md)."""
        return (f"a second watch from its resourceVersion {since} was answered 410 Gone ({message}): the "
                f"watch cache moved past it while the watch read nothing, not even a bookmark (or, behind a "
                f"load balancer, an API server started since answered)")  # fmt: skip

    def _behind(self, page: Obj) -> str | None:
        """What the probe's answer (the first object of the watched selection, a consistent read) shows the
        copy lacks, else None: that object missing from the copy or at another resourceVersion, or the
        selection empty while the copy is not. Exact for the first object: the probe asks the watch's own
        selectors (an object the copy holds but the server deleted is seen only when it is the first)."""
        items = page.get("items") or []
        if not items:
            return f"the server lists none, the copy holds {len(self.items)}" if self.items else None
        item = items[0]
        key, rv = key_of(item), _rv(item)
        mine = self.items.get(key)
        name = "/".join(part for part in key if part)
        if mine is None:
            return f"{name} (resourceVersion {rv}) is missing from the copy"
        if _rv(mine) != rv:
            return f"{name} is at resourceVersion {rv} on the server, {_rv(mine)} in the copy"
        return None

    async def _probe(self) -> Obj | _Unproven4xx | _Failed | str:
        """One consistent ``LIST ?limit=1`` of the watched collection with the watch's own selectors (no
        resourceVersion), bounded by ``probe_timeout_s`` on ``sleep``: the page when answered 2xx;
        ``_Unproven4xx`` for a 4xx (the server answers, but proves nothing of its storage: 429 throttled,
        403/401 refused (one WARNING: the probe cannot work with these credentials), ...); ``_Failed`` for a
        5xx or a connection error (refused, reset, closed: asked again once); else why not (no answer in
        time)."""
        path = self.rt.collection_path(self.namespace)
        # (the request's own timeout, on real time, is only a backstop where ``sleep`` is not)
        backstop = max(30.0, 2 * self.probe_timeout_s)
        q = {**self._query(), "limit": 1}
        ask = asyncio.create_task(self._ask(path, q, backstop))
        timer: asyncio.Future[None] = asyncio.ensure_future(self.sleep(self.probe_timeout_s))
        both: list[asyncio.Future[Any]] = [ask, timer]
        try:
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not ask.done():
                ask.cancel()
            await asyncio.wait(both)
        if ask.cancelled():
            return f"no answer within {self.probe_timeout_s:g} s"
        e = ask.exception()
        if e is None:
            return ask.result()
        if isinstance(e, _ProbeRefused):
            if e.error.status >= 500:
                return _Failed(str(e.error), e.retry_after_s)
            if e.error.status in (401, 403):
                self.probes_refused += 1
                if not self._probe_refusal_logged:
                    self._probe_refusal_logged = True
                    log.warning("reflector %s: the liveness probe (LIST limit=1 with the watch's selectors) "
                                "was refused: %s; it proves nothing: while the watch is quiet the copy is "
                                "not credited (its age grows)", self.name, e.error)  # fmt: skip
            else:
                log.debug("reflector %s: liveness probe answered %s", self.name, e.error)
            return _Unproven4xx(str(e.error), e.retry_after_s)
        if isinstance(e, TimeoutError):  # (the request's own backstop: ``sleep`` is not real time)
            return f"{type(e).__name__}: {e}"
        if isinstance(e, (aiohttp.ClientError, OSError, orjson.JSONDecodeError)):
            # (refused, reset, closed before the answer, an answer cut: asked again once, as a 5xx)
            return _Failed(f"{type(e).__name__}: {e}", None)
        raise e

    async def _ask(self, path: str, q: dict[str, Any], timeout_s: float) -> Obj:
        """The probe's request: its page, or ``_ProbeRefused`` with the server's Retry-After (the header, or
        a Status's ``details.retryAfterSeconds``)."""
        resp = await self.client.open("GET", path, q, timeout_s=timeout_s)
        async with resp:
            raw = await resp.read()
            if 200 <= resp.status < 300:
                out: Obj = orjson.loads(raw) if raw else {}
                return out
            error = error_from(resp.status, raw)
            retry_after: float | None = None
            try:
                retry_after = float(resp.headers.get("Retry-After", ""))
            except ValueError:
                with contextlib.suppress(orjson.JSONDecodeError, LookupError, TypeError, ValueError):
                    retry_after = float(orjson.loads(raw)["details"]["retryAfterSeconds"])
            if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
                retry_after = None
            raise _ProbeRefused(error, retry_after)

    async def _stream(self, q: dict[str, Any], sent: float, timeout_s: int) -> None:
        # No total or read timeout here: the deadline above bounds the watch, TCP keepalive a dead peer.
        read = aiohttp.ClientTimeout(sock_connect=10, sock_read=None)
        self._opening = True
        resp = await self.client.open("GET", self.rt.collection_path(self.namespace), q, timeout_s=read)
        async with resp:
            self._keepalive(resp)
            if resp.status == 410:
                raise _Gone
            if not 200 <= resp.status < 300:
                raise error_from(resp.status, await resp.read())
            self._opening = False
            self.watches += 1
            # An open watch counts as in sync (``age()`` 0): the cause of the last failure is over too, or
            # a quiet type (no bookmark for up to 10 min) kept a dead outage's error in /readyz meanwhile.
            self.error = None
            if self._watch_refused:  # the refusal is over: the relist since then counts now
                self._watch_refused = False
                if self._listed_at is not None:
                    self.last_sync, self._listed_at = self._listed_at, None
                    self.error = None
            conn = resp.connection
            proto = conn.protocol if conn is not None else None
            loop = asyncio.get_running_loop()
            opened, events = loop.time(), self.events
            buf = b""
            self._watching = True
            try:
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            self._on_event(orjson.loads(line))
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                # A proxy's idle cut may close the connection (FIN) without the stream's last chunk: after
                # a hold, an end like a clean one. Not so a reset or a keepalive timeout (the protocol
                # holds a ClientOSError then: the peer is gone, not done), nor a close at once.
                closed = proto is not None and isinstance(proto.exception(), aiohttp.ServerDisconnectedError)
                if not closed or loop.time() - opened < HELD_OPEN_S:
                    raise
                raise (_Unproven if self.events == events else _Cut) from None
            finally:
                self._watching = False
                if loop.time() - opened >= HELD_OPEN_S:
                    self.backoff.reset()
            # A clean end of the stream. At its timeoutSeconds: the server ran the watch to its end (in
            # sync, even with nothing to deliver). Sooner, having read nothing, after a hold: a proxy's idle
            # timeout or a server going away; nothing says the server is alive: relist.
            if loop.time() - sent >= timeout_s - min(TIMEOUT_END_SLACK_S, 0.1 * timeout_s):
                self._synced_now()
            elif self.events == events and loop.time() - opened >= HELD_OPEN_S:
                raise _Unproven

    def _proof(self) -> None:
        """The watch read an event, or a bookmark that moved its resourceVersion: in sync now, and the
        liveness probe's silence starts over (``proofs``)."""
        self.proofs += 1
        self._heard_at = self.clock()
        self._synced_now()

    def _keepalive(self, resp: aiohttp.ClientResponse) -> None:
        conn = resp.connection
        sock = conn.transport.get_extra_info("socket") if conn is not None and conn.transport else None
        if self.keepalive is not None and sock is not None:
            try:
                self.keepalive.apply(sock)
            except OSError as e:  # not TCP (a Unix socket proxy): the watch's deadline still holds
                log.debug("reflector %s: no TCP keepalive on the watch: %s", self.name, e)

    def _on_event(self, ev: dict[str, Any]) -> None:
        etype, obj = ev.get("type"), ev.get("object") or {}
        self.events += 1
        if etype == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone
            raise KubeError(int(code or 500), str(obj.get("message", "")), str(obj.get("reason", "")))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            self.bookmarks += 1
            if not rv or rv == self.resource_version:
                # kube-apiserver's cacher bookmarks a watch about every minute with the type's last
                # resourceVersion once that is past the watch's start, the same one again while the type
                # stands still (a change elsewhere, a pod in another namespace, starts them): it shows
                # the stream delivers, not that the watch cache follows etcd. No proof: the liveness
                # probe's silence goes on (k8s18; before, such bookmarks kept a quiet watch from ever
                # being probed).
                self.bookmarks_repeated += 1
                return
            self._proof()
            self.resource_version = rv
            return
        self._proof()
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("reflector %s: unknown watch event %r", self.name, etype)
            return
        k = key_of(obj)
        if etype == "DELETED":
            self.items.pop(k, None)
        else:
            self.items[k] = obj
        if rv:
            self.resource_version = rv
        self._emit(etype, obj)


def _rv(obj: Obj) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")
