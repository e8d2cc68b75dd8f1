"""``kvgate serve --workers N``: N gateway processes on one port, under a small supervisor.

Why: one Python process uses one core at most, so a single gateway process caps throughput at about
1 / (CPU per request). With ``--workers N`` the kernel spreads incoming *connections* over N worker
processes that all listen on the data port (``SO_REUSEPORT``); each is a complete ``GatewayServer``.

What this trades: in-flight counts are shared (``gateway.shared_inflight``: each worker publishes
its own per-endpoint counts into a shared-memory table and folds the others' into its endpoints every
``SHARED_INFLIGHT_SYNC_S``), so every worker balances on the fleet-wide load; the same segment holds the
tenants' rate-limit buckets and the requests in flight against ``maxConcurrentRequests``
(``gateway.shared_tenants``), so those limits are the fleet's, as in one process. Flow control keeps one
queue per worker, ordered across the fleet by marks in the same segment (``flowcontrol.fleet``: a worker
lets a request wait while another has one waiting that goes first), and decides who is over their fair
share and how many running slots to keep free on the fleet's counts per flow (each worker's share row in
the segment, folded by the in-flight sync: ``fleet.FleetShares``). Prefix state converges: each
worker sends its prefix-index insertions to the others every few ms over unix datagram sockets
(``gateway.prefix_gossip``, lossy, never blocking) and applies theirs. The round-robin cursor stays
per worker; scraped metrics (queue, KV use) are the same truth for
all, seen by each worker's own scraper. Keep the default (1) unless the gateway's own CPU is the
bottleneck.

The supervisor (this module) holds no data path. It reserves the port (bound, not listening, so it
takes no connections), starts the workers (``spawn``: fresh interpreters, nothing inherited from the
supervisor's event loop), serves the admin port itself — ``/metrics`` merges every worker's metrics
with a ``worker`` label, ``/readyz`` is ready while at least ``listen.minReadyWorkers`` workers are
(default 1; a worker opens its data port once its start-up is done, then reports, and counts from then),
``/debug/picks/<id>`` asks each worker, ``/healthz`` reads their heartbeats (``worker_health``) — restarts
a worker that dies (giving up if they keep dying at start) or wedges (no heartbeat for
``listen.workerTimeoutSeconds``: killed first), backing off a slot's restarts while its workers keep
ending before they served a while (``worker_health.restart_delay``), and on SIGTERM/SIGINT
has every worker drain (the same graceful drain as one process) before it exits. With ``--config`` it
watches the file as one process does (SIGHUP, the file's stamp): a file that fails validation is
logged here and reaches no worker; a valid one is written, as the config it checked, to a private
snapshot (``Supervisor.write_snapshot``) and applied by every worker's own ``ConfigReloader`` (the
supervisor sends SIGHUP). Workers read only that snapshot, never the user's file: an edit made after the
check, or a SIGHUP sent to the whole process group, cannot give workers a config the supervisor did not
check, or different configs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kvgate import stderrlog
from kvgate.aio import serve_on_sighup
from kvgate.config.gateway import GatewayConfig, GatewayConfigError, load_gateway_config
from kvgate.datalayer.aggregate import AGGREGATE_PATH
from kvgate.gateway import worker_health
from kvgate.gateway.errors import GatewayError, error_response
from kvgate.gateway.metrics import LAST_RELOAD_AT, LAST_RELOAD_OK, RELOADS_TOTAL
from kvgate.gateway.reload import ConfigWatch, FileStamp, check_pickers, take_applied, warm_pickers
from kvgate.gateway.shared_inflight import layout as inflight_layout
from kvgate.httpfront.server import FrontServer, Handler, Request, Response, get_only
from kvgate.scheduling.plugins.session import cookie_key
from kvgate.stderrlog import off_loop_stderr

if TYPE_CHECKING:
    from kvgate.datalayer.endpoint import Endpoint

log = logging.getLogger("kvgate.gateway.workers")

# A worker that dies this soon after starting, this many times in a row, stops the supervisor:
# restarting would only loop (bad config seen at runtime, port taken, out of memory).
_FAST_DEATH_S = 5.0
_MAX_FAST_DEATHS = 3
_ADMIN_FETCH_TIMEOUT_S = 5.0
# The supervisor's /readyz asks the workers (all at once) for at most this long: a kubelet readiness probe
# times out after 1 s by default (review s20-qa M2); one that does not answer in time is busy or wedged by
# its heartbeat (``worker_health.readyz``).
_READYZ_FETCH_TIMEOUT_S = 0.5
# A gap this long between two ticks of the supervisor's watch (0.2 s apart) means it stood still itself.
_STALL_S = 1.0
# How often the stop looks for workers whose drain ended (each one's rows are cleared then: ``stop_workers``).
_DRAIN_POLL_S = 0.05
# How often a worker's event loop writes its heartbeat (the time, into its slot of a shared array); the
# supervisor kills a worker whose heartbeat is older than ``listen.workerTimeoutSeconds`` (review s20-qa M2).
HEARTBEAT_S = 0.5
# A worker builds its pickers and binds its ports in well under this; past it, it is stuck.
_START_TIMEOUT_S = 60.0
# A spawn that fails (OSError: out of processes, descriptors or memory) is tried again after a pause that
# doubles from _SPAWN_RETRY_S to _SPAWN_RETRY_MAX_S; the supervisor gives up (exit 1) only once spawns have
# failed in a row for _SPAWN_GIVE_UP_S: a transient EAGAIN must not drain the workers that still serve.
_SPAWN_RETRY_S = 1.0
_SPAWN_RETRY_MAX_S = 30.0
_SPAWN_GIVE_UP_S = 300.0
SPAWN_GIVE_UP_ENV = "KVGATE_SPAWN_GIVE_UP_S"  # (tests: a shorter window)


# --- worker side -------------------------------------------------------------------------------


SHARED_INFLIGHT_SYNC_S = 0.005  # how stale other workers' dispatches may be in a worker's picker


def _worker_main(
    cfg: GatewayConfig,
    index: int,
    report: Connection,
    lifeline: Connection,
    admin_on_data: bool,
    shared: Shared | None = None,
    gossip_dir: str | None = None,
    config_path: str | None = None,
    log_level: int = logging.WARNING,
    file_cfg: GatewayConfig | None = None,
    heartbeat: Any = None,
) -> None:
    """Entry point of one worker process: a full gateway on the shared port, admin on loopback.

    ``lifeline`` is the read end of a pipe whose write end only the supervisor holds: it turns
    readable (EOF) when the supervisor is gone, however it died (even SIGKILL), and the worker then
    drains and exits instead of serving on as an orphan.

    ``config_path``: the supervisor's snapshot of the config it checked (``Supervisor.write_snapshot``),
    re-read on its SIGHUP; ``file_cfg``: the file's config the running one came from, what a reload
    compares with. ``heartbeat``: the supervisor's shared array of heartbeats (``_beat``)."""
    # A reload's SIGHUP (the supervisor's, or one sent to the whole process group) must never kill a worker
    # still starting: it is blocked from the spawn on (``Supervisor.start_worker``: the mask is inherited
    # through fork and exec, so the interpreter's own start-up is covered too) until the reloader's handler
    # is installed (``_worker``), and ignored meanwhile; the supervisor sends it again once the worker is
    # up if a reload happened while it started.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import uvloop

    from kvgate.gateway.cli import build_pools

    # A fresh interpreter: the supervisor's --log-level, and each line says which worker wrote it.
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    off_loop_stderr()  # (as ``kvgate serve``'s: review s25-rev-gw25 F4)
    # The supervisor handles Ctrl-C for the whole group: a worker only drains on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pools = build_pools(cfg, announce=False)  # (the supervisor said the configs' warnings, once)
    uvloop.run(_worker(cfg, pools, index, report, lifeline, admin_on_data, shared, gossip_dir, config_path,
                       file_cfg, heartbeat))  # fmt: skip


async def _worker(
    cfg: GatewayConfig,
    pools: list[Any],
    index: int,
    report: Connection,
    lifeline: Connection,
    admin_on_data: bool,
    shared: Shared | None = None,
    gossip_dir: str | None = None,
    config_path: str | None = None,
    file_cfg: GatewayConfig | None = None,
    heartbeat: Any = None,
) -> None:
    from kvgate.gateway.cli import tune_gc
    from kvgate.gateway.reload import start_reloader
    from kvgate.gateway.server import GatewayServer

    # The data port opens only once start-up is done (KV-event catch-up, upstream warm-up): the kernel
    # gives a listening worker its share of new connections, ready or not; the private admin port opens
    # first, but the supervisor counts this worker only once it reports (below).
    # The fleet's tenant buckets and in-flight count (``shared_tenants``), attached before any request.
    _check_fleet_layout(shared)  # (a worker of another layout refuses to start: ``fleet.check_layout``)
    tenants = _attach_tenants(shared, index)
    responses = _attach_responses(shared, index)  # (and the fleet's Responses ids: shared_responses)
    server = GatewayServer(cfg, pools, reuse_port=True, admin_host="127.0.0.1", admin_on_data=admin_on_data,
                           listen_when_ready=True, tenants=tenants, responses=responses)  # fmt: skip
    await server.start()
    reloader = None
    # The prefix gossip, once started: a reload that swaps pickers moves it to the new prefix indexes.
    gossips: list[Any] = []

    def relayout() -> None:
        from kvgate.gateway.prefix_gossip import pool_indexes
        from kvgate.gateway.reload import layout_id

        for g in gossips:
            g.relayout(pool_indexes(pools), layout_id([p.cfg for p in pools]))

    if config_path is not None:  # on the supervisor's SIGHUP only: it watches the file for all workers
        reloader = start_reloader(
            config_path, cfg, pools, server.apply_limits, poll_s=None, file_cfg=file_cfg, load=read_snapshot,
            server=server, on_swap=relayout, announce=False,
        )  # fmt: skip
    # The handler (the reloader's, or SIG_IGN without --config) is in place: SIGHUP may come through now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    tune_gc()
    report.send(server.admin_port)
    report.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def supervisor_gone() -> None:
        loop.remove_reader(lifeline.fileno())
        log.warning("worker %d: supervisor gone; draining", index)
        stop.set()

    loop.add_reader(lifeline.fileno(), supervisor_gone)
    beat = asyncio.create_task(_beat(heartbeat, index)) if heartbeat is not None else None
    sync = asyncio.create_task(_share_inflight(pools, index, shared, tenants)) if shared is not None else None
    gossip = None
    if gossip_dir is not None and shared is not None:
        gossip = asyncio.create_task(_share_prefixes(pools, index, gossip_dir, shared[2], gossips))
    await stop.wait()
    for task in (gossip, reloader):
        if task is not None:
            task.cancel()
    try:
        # The drain goes on serving this worker's flow-control queue: the shared in-flight counts and
        # queue marks keep following the other workers until it ends, or this worker's gate would stay
        # on their counts as at the signal, saturated, and its queued requests wait out their TTL while
        # the pool is idle (review s18-qa M3).
        await server.stop()
    finally:
        for task in (sync, beat):
            if task is not None:
                task.cancel()
        if tenants is not None:
            tenants.close()
        if responses is not None:
            responses.close()


async def _beat(heartbeat: Any, index: int) -> None:
    """This worker's heartbeat: the time (``time.monotonic``, one clock for every process on the host) into
    its slot, every ``HEARTBEAT_S``, from its event loop: a loop blocked (a bug, a long synchronous call) or
    a stopped process stops it, and the supervisor then kills and restarts the worker
    (``Supervisor.check_heartbeat``). It beats on through a drain (a worker sent SIGTERM by another than
    the supervisor, which checks no heartbeat once it stops the workers, is not killed mid-drain)."""
    while True:
        heartbeat[index] = time.monotonic()
        await asyncio.sleep(HEARTBEAT_S)


def _tenants_offset(workers: int) -> int:
    """Where the tenant table starts in the segment's extra bytes: after the flow-control marks."""
    from kvgate.flowcontrol import fleet

    return fleet.segment_size(workers)


# What a worker is given of the shared segment (``worker_shared``): its name, its lock, the workers and
# the supervisor's fleet layout mark.
Shared = tuple[Any, ...]


def _fleet_mark() -> int:
    """The fleet segment's layout mark, the in-flight table before it included (rev-a36 F4)."""
    from kvgate.flowcontrol import fleet

    return fleet.layout_mark(table=inflight_layout())


def worker_shared(name: str, lock: Any, workers: int) -> Shared:
    """The shared segment as the supervisor hands it to a worker it spawns: with this code's fleet layout
    mark, which the worker compares with its own (``_check_fleet_layout``) before it attaches anything.
    Four items: a worker from before the segment's layout mark (session 25) unpacks exactly three at its
    first use of them (``_attach_tenants`` since feb991f7, before its server starts), so it stops there,
    before it reads or writes the segment at another stride (it checks no mark); a 3-tuple (a supervisor
    from before this) is still read."""

    return (name, lock, workers, _fleet_mark())


def _check_fleet_layout(shared: Shared | None) -> None:
    """ValueError when the supervisor's flow-control marks (the in-flight segment's extra bytes) are not
    this code's layout (review s25-rev-wk25 F1: every row would be read and written at another stride)."""
    if shared is None:
        return
    from multiprocessing import shared_memory

    from kvgate.flowcontrol import fleet
    from kvgate.gateway.shared_inflight import DEFAULT_SLOTS, segment_size

    name, _lock, workers = shared[:3]
    if len(shared) > 3 and shared[3] != _fleet_mark():  # (the supervisor's code: ``worker_shared``)
        raise ValueError(
            f"the supervisor's flow-control fleet layout (mark {shared[3] & (2**64 - 1):#x}) is not this "
            f"worker's (mark {_fleet_mark() & (2**64 - 1):#x}): a worker of another version under a "
            "running supervisor (the installed kvgate changed since it started); restart the supervisor"
        )
    shm = shared_memory.SharedMemory(name=name)
    try:
        buf = shm.buf
        assert buf is not None
        view = buf[segment_size(workers, DEFAULT_SLOTS) :]
        try:
            fleet.check_layout(view, workers, table=inflight_layout())
        finally:
            view.release()
            del buf
    finally:
        shm.close()


def _attach_tenants(shared: Shared | None, index: int) -> Any:
    if shared is None:
        return None
    from kvgate.gateway.shared_inflight import DEFAULT_SLOTS, segment_size
    from kvgate.gateway.shared_tenants import SharedTenants

    name, lock, workers = shared[:3]
    return SharedTenants.attach(name, segment_size(workers, DEFAULT_SLOTS) + _tenants_offset(workers), lock,
                                workers, index)  # fmt: skip


def _attach_responses(shared: Shared | None, index: int) -> Any:
    if shared is None:
        return None
    from kvgate.gateway.shared_responses import SharedResponses, segment_name

    return SharedResponses.attach(segment_name(shared[0]), shared[2], index)


def _accounted(pool: Any) -> tuple[Endpoint, ...]:
    """``pool``'s endpoints and those gone from it with requests still running there: their counts stay
    published (and fold the others') until those finish, in case the address comes back (qa35a F1)."""
    eps = pool.endpoints()
    store = getattr(pool, "store", None)  # (a test's stand-in pool may have none)
    gone = store.departed() if store is not None else ()
    return (*eps, *gone) if gone else tuple(eps)


def _sync_pass(view: Any, pools: list[Any]) -> None:
    """One pass of the shared in-flight table over all pools: each endpoint under its pool's name (one
    server in two pools counts each pool's requests apart, rev-c35 F2), then the entries gone from every
    store since the last pass get their own counts zeroed (rev-c35 F3)."""
    for pool in pools:
        view.sync(_accounted(pool), getattr(pool, "name", ""))
    view.drop_unlisted()


async def _share_inflight(pools: list[Any], index: int, shared: Shared, tenants: Any = None) -> None:
    """``tenants``: the worker's ``SharedTenants``, whose lock (stuck-lock rules included) the flow control
    queue limits take (``fleet.FleetLimits``)."""
    from kvgate.flowcontrol import fleet
    from kvgate.gateway.shared_inflight import SharedInFlight

    name, lock, workers = shared[:3]
    view = SharedInFlight.attach(name, lock, workers, index, extra=fleet.segment_size(workers))
    marks = fleet.FleetMarks(view.extra, workers, index, lock=tenants)
    failed = False
    try:
        while True:
            _sync_pass(view, pools)
            for pool in pools:
                # flow control's queue order across workers (a reload's new picker gets its mark here)
                flow = getattr(pool.director, "flow", None)
                if flow is not None and flow.fleet is None:
                    flow.fleet = marks.pool(pool.name)
                    if flow.fleet is not None:  # its queue limits on the fleet's queued counts
                        flow.fleet.limits.attach(flow.ctl)
                if flow is not None and flow.fleet is not None:
                    # the held-back test and the reserve on the fleet's counts (``fleet.FleetShares``)
                    try:
                        flow.fleet.shares.sync(flow.ctl, flow.clock())
                    except Exception as e:  # (a bug: each worker keeps its own counts; logged once)
                        flow.ctl.fleet = None
                        if not failed:
                            log.error("worker %d: flow control's fleet counts failed: %s: %s", index,
                                      type(e).__name__, e, exc_info=e)  # fmt: skip
                        failed = True
            await asyncio.sleep(SHARED_INFLIGHT_SYNC_S)
    finally:
        # Its counts as they stand, last: a request that finished after the last pass (the drain ended
        # within the interval) must not stay in flight in the other workers' view, their gates
        # saturated on it and their queues waiting out the TTL.
        try:
            _sync_pass(view, pools)
        except Exception as e:  # (best effort: the others' view of this worker stays as last published)
            log.warning("worker %d: last in-flight sync failed: %s: %s", index, type(e).__name__, e)
        marks.close()  # (its view of the segment first; the dispatchers' marks answer "no defer" now)
        view.close()


async def _share_prefixes(
    pools: list[Any], index: int, directory: str, workers: int, out: list[Any] | None = None
) -> None:
    """Publish this worker's prefix-index insertions to the others and apply theirs (lossy, batched).
    ``out`` gets the ``PrefixGossip`` (a config reload's picker swap moves it: ``PrefixGossip.relayout``)."""
    from prometheus_client import REGISTRY

    from kvgate.gateway.prefix_gossip import (
        PREFIX_GOSSIP_S,
        DatagramChannel,
        GossipCollector,
        PrefixGossip,
        pool_indexes,
    )
    from kvgate.gateway.reload import layout_id

    channel = DatagramChannel(directory, index, workers)
    gossip = PrefixGossip(pool_indexes(pools), index, channel.send, layout=layout_id([p.cfg for p in pools]))
    if out is not None:
        out.append(gossip)
    collector = GossipCollector(gossip, channel)
    REGISTRY.register(collector)  # this worker process's default registry, served on its /metrics
    loop = asyncio.get_running_loop()

    def on_readable() -> None:
        for data in channel.drain():
            gossip.receive(data)

    loop.add_reader(channel.fileno(), on_readable)
    try:
        while True:
            await asyncio.sleep(PREFIX_GOSSIP_S)
            gossip.flush()
    finally:
        loop.remove_reader(channel.fileno())
        REGISTRY.unregister(collector)
        gossip.close()
        channel.close()


# --- metrics merge -----------------------------------------------------------------------------


def merge_metrics(texts: list[str | None], named: dict[str, str] | None = None) -> bytes:
    """One exposition from each worker's: every sample gets a ``worker`` label, families stay whole.
    ``named``: more expositions, labelled by their key (the supervisor's own: ``worker="supervisor"``)."""
    families: dict[str, Metric] = {}
    labelled: list[tuple[str, str | None]] = [(str(i), t) for i, t in enumerate(texts)]
    labelled += list((named or {}).items())
    for i, text in labelled:
        if text is None:
            continue
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                families[fam.name] = merged
            for s in fam.samples:
                merged.samples.append(s._replace(labels={"worker": i, **s.labels}))

    class _Merged:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


# --- supervisor --------------------------------------------------------------------------------


# The supervisor's private directories in the temp dir (``kvgate-<kind>-<random>``) each hold a lock file
# the supervisor keeps locked (``flock``) for its whole life: the kernel releases it however the process
# ends (SIGKILL, out of memory: no cleanup ran), so a later supervisor that can take the lock knows the
# owner is gone. Unlike a pid in the name, this holds across pid namespaces (two containers sharing /tmp,
# both pid 1) and pid reuse.
_PRIVATE_KINDS = ("config", "gossip")
_LOCK = ".lock"


def _lock_into(path: str) -> int:
    """A lock file in ``path``, made locked under another name then renamed in (a cleaner never finds it
    unlocked while its owner lives); its descriptor, to hold. Where the file system has no ``flock`` the
    file is left unlocked (logged): a cleaner cannot lock it either, so it leaves the directory."""
    new = os.path.join(path, _LOCK + ".new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            log.warning("cannot lock %s (%s): if this supervisor is killed, %s stays", new, e, path)
        os.rename(new, os.path.join(path, _LOCK))
    except OSError:
        os.close(fd)
        raise
    return fd


# flock unsupported by the file system (some network and FUSE ones).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def private_dir(kind: str) -> tuple[str, int]:
    """A new 0700 directory in the temp dir and the descriptor of its lock, held (keep it open until the
    directory is removed)."""
    path = tempfile.mkdtemp(prefix=f"kvgate-{kind}-")
    try:
        return path, _lock_into(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        raise


def ensure_private_dir(path: str, lock: int | None) -> int | None:
    """``path`` as ``private_dir`` made it, made again (with a new lock file) if it vanished (a temp-dir
    cleaner); the lock to hold from now on (``lock``, or the new one: ``lock`` is then closed). OSError
    if something else now sits there (a directory another user made in /tmp is not written into)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise OSError(f"{path} is not the supervisor's private directory") from None
        return lock
    try:
        new = _lock_into(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    if lock is not None:
        os.close(lock)
    return new


def clean_stale_dirs(root: str | None = None, now: float | None = None) -> list[str]:
    """Remove the private directories supervisors left behind when they died without cleaning up; the
    paths removed. Only those this user owns, real 0700 directories (no link, nothing another user made),
    whose lock file (a regular file, no link) can be locked: its owner is gone. One without a lock file
    is a directory being made, or one an older kvgate made (``_clean_legacy`` judges those); ``now``: the
    wall clock (file times are), for their age."""
    root = tempfile.gettempdir() if root is None else root
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    legacy: list[tuple[str, str]] = []  # (path, kind): ours by the checks above, without a lock file
    for name in names:
        parts = name.split("-")
        # kvgate-<kind>-<random>; older: kvgate-<kind>-<pid>-<start>-<random> (no lock file)
        if len(parts) not in (3, 5) or parts[0] != "kvgate" or parts[1] not in _PRIVATE_KINDS:
            continue
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                continue
            # O_NONBLOCK: opening a FIFO named .lock would wait for a writer (start-up stuck for good).
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(os.path.join(path, _LOCK), flags)
        except FileNotFoundError:
            legacy.append((path, parts[1]))
            continue
        except OSError:
            continue
        try:
            gone = stat.S_ISREG(os.fstat(fd).st_mode)
            if gone:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (its supervisor runs), or no flock here
            gone = False
        if not gone:
            os.close(fd)
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(path)
    removed += _clean_legacy(legacy, time.time() if now is None else now)
    return removed


# Older kvgate versions made the same directories without a lock file: nothing in them says whether their
# supervisor lives, but a gossip directory holds its workers' bound unix sockets. Such a directory is left
# until it has been unchanged this long (longer than any start-up: a lockless directory may be one being
# made right now, by this version or an older one).
_LEGACY_MIN_AGE_S = 600.0
_LEGACY_CONFIG_FILES = frozenset({"config.pickle", "config.pickle.tmp"})


def _clean_legacy(dirs: list[tuple[str, str]], now: float) -> list[str]:
    """Remove the lockless directories (``clean_stale_dirs``) whose supervisor is gone: holding only what
    those versions wrote there, unchanged for ``_LEGACY_MIN_AGE_S``, and for a gossip directory, no
    socket a live worker holds. A config directory tells nothing of its owner: it is removed only while no
    older supervisor of this user in this temp dir looks alive (a lockless gossip directory that is new or
    has a live socket: every such supervisor had one, ``--workers`` > 1)."""
    removed: list[str] = []
    configs: list[str] = []
    legacy_alive = False
    for path, kind in dirs:
        entries = _legacy_entries(path, kind, now)
        if entries is None:
            if kind == "gossip" and _young(path, now):
                legacy_alive = True
            continue
        if kind == "config":
            configs.append(path)
        elif any(_socket_alive(e) for e in entries):
            legacy_alive = True
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if not legacy_alive:
        for path in configs:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _young(path: str, now: float) -> bool:
    try:
        return os.lstat(path).st_mtime > now - _LEGACY_MIN_AGE_S
    except OSError:
        return False


def _legacy_entries(path: str, kind: str, now: float) -> list[str] | None:
    """The paths in a lockless directory if it holds only what an older supervisor wrote there (config:
    its snapshot files; gossip: its workers' sockets) and nothing in it changed for ``_LEGACY_MIN_AGE_S``;
    else None (kept)."""
    try:
        if _young(path, now):
            return None
        out = []
        for name in os.listdir(path):
            entry = os.path.join(path, name)
            st = os.lstat(entry)
            if kind == "config":
                ours = name in _LEGACY_CONFIG_FILES and stat.S_ISREG(st.st_mode)
            else:
                ours = stat.S_ISSOCK(st.st_mode) and name.startswith("w") and name.endswith(".sock")
            if not ours or st.st_uid != os.getuid() or st.st_mtime > now - _LEGACY_MIN_AGE_S:
                return None
            out.append(entry)
        return out
    except OSError:
        return None


def _socket_alive(path: str) -> bool:
    """Whether a process holds the unix datagram socket bound at ``path`` (a connect is refused once its
    holder is gone); True where it cannot tell."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(path)
        return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return True
    finally:
        s.close()


def read_snapshot(path: str) -> GatewayConfig:
    """A worker's reload: the config the supervisor checked, as ``Supervisor.write_snapshot`` wrote it."""
    try:
        with open(path, "rb") as f:
            cfg = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise GatewayConfigError("--config", f"cannot read the supervisor's snapshot {path}: {e}") from e
    if not isinstance(cfg, GatewayConfig):
        raise GatewayConfigError("--config", f"the supervisor's snapshot {path} holds no gateway config")
    return cfg


class _WorkersReload(ConfigWatch):
    """The supervisor's watch on ``--config``: the one validation and error log, then ``reloaded``."""

    def __init__(
        self,
        sup: Supervisor,
        path: str,
        stamp: FileStamp | None = None,
        load: Callable[[str], GatewayConfig] = load_gateway_config,
    ) -> None:
        super().__init__(path, stamp=stamp, load=load, on_result=sup.reload_result)
        self.sup = sup

    async def prepare(self, new: GatewayConfig) -> Any:
        """The check's tokenizer files read on a thread, not on the supervisor's loop (``warm_pickers``)."""
        await asyncio.to_thread(warm_pickers, self.sup.file_cfg, new)
        return None

    def apply(self, new: GatewayConfig, prepared: Any = None) -> str | None:
        self.sup.reloaded(new)
        return None


class Supervisor:
    def __init__(
        self,
        cfg: GatewayConfig,
        workers: int,
        config_path: str | None = None,
        file_cfg: GatewayConfig | None = None,
        stamp: FileStamp | None = None,
        load: Callable[[str], GatewayConfig] = load_gateway_config,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.load = load  # a reload's read and check of config_path (``cli.reload_loader``)
        # The file's config (before flags and --kv-events auto), with what reloads applied: what each
        # worker compares a reload with; and its ``file_stamp`` from before the file was read.
        self.file_cfg = file_cfg if file_cfg is not None else cfg
        self.stamp = stamp
        self.snapshot: str | None = None  # the checked config the workers reload (private directory)
        self.reloads = 0  # valid config reloads sent to the workers
        # Reloads that never reach a worker (a file refused here, a snapshot not written), by result, on
        # the admin /metrics as worker="supervisor" (the workers count what they apply).
        # (its own two results at 0 from the start, as the workers' ``applied``: qa24 F5)
        self.reload_failures: dict[str, int] = {"invalid": 0, "failed": 0}
        # The last reload's result here and when one last succeeded (``LAST_RELOAD_OK``; a file refused
        # here reaches no worker, whose own gauges still read 1).
        self.last_reload_ok = True
        self.last_reload_at = time.time()
        self.n = workers
        # The session cookie's digest key in the environment before any spawn: every worker names an
        # endpoint alike (rev-c36 F1).
        cookie_key()
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess | None] = [None] * workers
        # Each worker's last heartbeat (``_beat``; set at its report too), shared with the workers.
        self.heartbeat: Any = self.ctx.RawArray("d", workers)
        self.heartbeat_kills = 0  # workers killed for a missed heartbeat (logged each time)
        # Per slot: when its worker reported its start; the heartbeat age it was killed at (None: not
        # killed); its streak of workers that ended before serving ``worker_health.STABLE_S``; when its
        # backed-off restart is due (None: not waiting); how its last worker ended; its last /readyz answer.
        self.reported_at: list[float] = [0.0] * workers
        self.killed_age: list[float | None] = [None] * workers
        self.streak: list[int] = [0] * workers
        self.restart_due: list[float | None] = [None] * workers
        self.why: list[str] = [""] * workers
        self.last_ready: list[bool] = [False] * workers
        # Restarts made, by what ended the worker before (admin /metrics): counted once the new worker is
        # started, not when the old one ended (a backoff wait, a stop during it: review s21-wrk L2).
        self.restarts: dict[str, int] = {"exited": 0, "wedged": 0, "start_timeout": 0}
        self.start_killed: list[bool] = [False] * workers  # its worker was killed for not starting in time
        self.ended_why: list[str] = ["exited"] * workers  # the reason of its last worker's end (a restart's)
        # When the supervisor's own watch resumed after standing still (the whole tree frozen: docker
        # pause, Ctrl-Z, a cgroup freezer): heartbeat ages count from then (review s20-fixes-b M2).
        self.awake_since = 0.0
        # Write ends of each worker's lifeline pipe: held open for the supervisor's whole life.
        self._lifelines: list[Connection | None] = [None] * workers
        self.admin_ports: list[int | None] = [None] * workers
        self.started_at: list[float] = [0.0] * workers
        self.fast_deaths = 0
        self.spawn_failures = 0  # failed spawns of the slots now restarting (not deaths: no worker ran)
        self.spawn_give_up_s = float(os.environ.get(SPAWN_GIVE_UP_ENV) or _SPAWN_GIVE_UP_S)
        self.clock, self.sleep = time.monotonic, asyncio.sleep  # the spawn retries' time (injected)
        self.stopping = False
        self.failed = False
        self.port = 0
        self.admin_port: int | None = None
        self._reserve: socket.socket | None = None
        self._session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None  # ``/readyz`` probes: no keep-alive
        self._admin: asyncio.Server | None = None
        self._admin_front: FrontServer | None = None
        self.shared: Any = None  # SharedInFlight (owner view) when workers > 1
        self.marks: Any = None  # flowcontrol.fleet.FleetMarks on its extra bytes, with it
        self.tenants: Any = None  # shared_tenants.SharedTenants after the marks, with it
        self.responses: Any = None  # shared_responses.SharedResponses: its own segment, with it
        self.gossip_dir: str | None = None  # where the workers' prefix-gossip sockets live (workers > 1)
        # Each private directory's lock (``private_dir``), held until the directory is removed.
        self._locks: dict[str, int] = {}

    # --- ports -------------------------------------------------------------------------------
    def reserve_port(self) -> int:
        """Bind (without listening) the data port with SO_REUSEPORT: picks the port when 0 was asked
        for and holds it while workers come and go; a non-listening socket receives no connections.

        Held as ``GatewayServer`` holds a port while it starts (``server._bind_held``): without SO_REUSEADDR
        (so another process's bind fails at once; this user's SO_REUSEPORT workers still share it), or
        with it when only TIME_WAIT leftovers of an earlier process hold the port, then cleared."""
        family = socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET

        def bind(reuse_address: bool) -> socket.socket:
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse_address))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((self.cfg.host, self.cfg.port))
            except BaseException:
                s.close()
                raise
            return s

        try:
            s = bind(False)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            s = bind(True)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        self._reserve = s
        self.port = s.getsockname()[1]
        return self.port

    # --- workers -----------------------------------------------------------------------------
    async def start_worker(self, i: int) -> None:
        from dataclasses import replace

        # Each worker: the shared data port, and a private admin port on loopback for the supervisor.
        wcfg = replace(self.cfg, port=self.port, admin_port=0, admin_tls=None)  # private: plaintext
        recv, send = self.ctx.Pipe(duplex=False)
        try:
            life_r, life_w = self.ctx.Pipe(duplex=False)
        except OSError:
            recv.close()
            send.close()
            raise
        shared = None
        if self.shared is not None:
            self._clear_rows(i)  # (done at its predecessor's death too: ``_ended``; again here, at no cost)
            shared = worker_shared(self.shared.name, self.shared.lock, self.n)
        proc = self.ctx.Process(
            target=_worker_main,
            args=(wcfg, i, send, life_r, self.cfg.admin_port is None, shared, self.gossip_dir,
                  self.snapshot, logging.getLogger().getEffectiveLevel(), self.file_cfg, self.heartbeat),
            name=f"kvgate-worker-{i}",
        )  # fmt: skip
        reloads = self.reloads
        # SIGHUP blocked across the spawn: the child inherits the mask, so a process-group SIGHUP before
        # the worker installs its handler stays pending instead of killing it (it unblocks it then).
        # The supervisor's own SIGHUP meanwhile stays pending too, and is handled as this returns.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            proc.start()
        except BaseException as e:  # EAGAIN, EMFILE, ENOMEM, a pickling error: nothing of its left open
            for end in (recv, send, life_r, life_w):
                end.close()
            if isinstance(e, OSError):
                # Failed after the fork (the child died before it read its data: BrokenPipeError): the
                # child's pid is lost with the Process's Popen; reaped here, not left a zombie per retry.
                self._reap_strays()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        send.close()
        life_r.close()
        old = self._lifelines[i]
        if old is not None:
            old.close()
        self._lifelines[i] = life_w
        self.procs[i] = proc
        self.started_at[i] = time.monotonic()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int | None] = loop.create_future()

        def on_readable() -> None:
            loop.remove_reader(recv.fileno())
            try:
                ready.set_result(recv.recv())
            except Exception:  # EOF (died before it listened) or a garbled report
                ready.set_result(None)

        loop.add_reader(recv.fileno(), on_readable)
        try:  # (asyncio.timeout: Python 3.11's wait_for dropped a cancel landing as the report came)
            async with asyncio.timeout(_START_TIMEOUT_S):
                self.admin_ports[i] = await ready
        except TimeoutError:
            log.error("worker %d did not start within %.0fs; killing it", i, _START_TIMEOUT_S)
            proc.kill()
            self.admin_ports[i] = None
            self.start_killed[i] = True
        finally:
            loop.remove_reader(recv.fileno())  # no-op once read; needed if cancelled or timed out
            recv.close()
        if self.admin_ports[i] is not None:  # (no await since it was set: the watch sees both at once)
            self.heartbeat[i] = self.reported_at[i] = time.monotonic()  # the bound counts from its report
            self.killed_age[i] = None
            self.last_ready[i] = False  # (no answer yet: a busy worker counts as its last one)
        if self.admin_ports[i] is None:
            log.error("worker %d exited before it started listening", i)
        elif self.reloads != reloads:  # a reload while it started: its SIGHUP may have been ignored
            self._signal_reload(proc)

    def _reap_strays(self) -> None:
        """Reap this process's dead children that no worker (nor the resource tracker) is: a spawn that
        failed after its fork leaves one. Linux (/proc); elsewhere a no-op."""
        from multiprocessing import resource_tracker

        known = {p.pid for p in self.procs if p is not None and p.pid is not None}
        known.add(getattr(resource_tracker._resource_tracker, "_pid", None) or 0)
        for pid in _zombie_children(os.getpid()) - known:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
                log.warning("reaped pid %d, a worker whose spawn failed after its fork", pid)

    def write_snapshot(self, cfg: GatewayConfig) -> None:
        """The config the workers reload, replaced whole (a worker never reads half of one)."""
        assert self.snapshot is not None
        directory = os.path.dirname(self.snapshot)  # a /tmp cleaner may have removed it: made again
        lock = ensure_private_dir(directory, self._locks.get(directory))
        if lock is not None:
            self._locks[directory] = lock
        tmp = self.snapshot + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(cfg, f)
        os.replace(tmp, self.snapshot)

    def reloaded(self, new: GatewayConfig) -> None:
        """A valid ``--config``: written to the snapshot, then every started worker reloads it (SIGHUP; a
        worker still starting gets it once up). Each changed picker is built here first (on an empty
        store): one that fails refuses the file (``GatewayConfigError``), so no worker is sent it. What
        the workers apply live (each pool's endpoints, ``limits``, pickers) is kept here too, so a worker
        restarted later starts from it; the supervisor's admin port takes the limits."""
        pickers = check_pickers(self.file_cfg, new)
        self.write_snapshot(new)
        self.reloads += 1
        take_applied(self.cfg, new, pickers=pickers)
        if self.file_cfg is not self.cfg:
            take_applied(self.file_cfg, new, pickers=pickers)
        if self._admin_front is not None:
            self._admin_front.apply_limits(new.limits)
        for i, proc in enumerate(self.procs):
            if proc is not None and self.admin_ports[i] is not None:
                self._signal_reload(proc)

    @staticmethod
    def _signal_reload(proc: BaseProcess) -> None:
        if proc.pid is not None and proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGHUP)

    async def watch(self) -> None:
        """Restart workers that die; give up when they die right after starting, again and again, or
        when one cannot be spawned for ``spawn_give_up_s``.

        Each slot restarts in a task of its own: a restart waits for the new worker to start (its KV-event
        catch-up) and a failed spawn is retried for up to 5 minutes, and meanwhile another worker that
        dies is restarted at once (one restart at a time, in the watch itself, left it dead until then)."""
        restarting: dict[int, asyncio.Task[bool]] = {}
        try:
            tick = time.monotonic()
            while not self.stopping:
                await asyncio.sleep(0.2)
                last, tick = tick, time.monotonic()
                if tick - last > _STALL_S:
                    # This watch stood still (frozen with the workers, or starved): a worker's beat is as
                    # old as that, wedged or not; each gets the whole bound again from now.
                    self.awake_since = tick
                for i, task in list(restarting.items()):
                    if not task.done():
                        continue
                    del restarting[i]
                    if not task.result():  # gave up (``failed`` set); an exception ends the watch too
                        return
                    new = self.procs[i]
                    log.info("worker %d restarted (pid %s)", i, new.pid if new is not None else "?")
                for i, proc in enumerate(self.procs):
                    if self.stopping or i in restarting or proc is None:
                        continue
                    if proc.is_alive():
                        self.check_heartbeat(i, proc)
                        continue
                    proc.join()
                    lived = time.monotonic() - self.started_at[i]
                    log.error(
                        "worker %d (pid %s) exited with %s after %.1fs", i, proc.pid, proc.exitcode, lived
                    )
                    if self.killed_age[i] is None:  # (a wedged one killed: the restart backoff is for it)
                        self.fast_deaths = self.fast_deaths + 1 if lived < _FAST_DEATH_S else 0
                    if self.fast_deaths >= _MAX_FAST_DEATHS:
                        # (a worker of another kvgate version, the installed one changed since this
                        # supervisor started, dies there too: ``worker_shared``)
                        log.error(
                            "workers keep dying at start; shutting down (if the installed kvgate changed "
                            "since this supervisor started, its workers cannot join it: restart kvgate serve)"
                        )
                        self.failed = True
                        return
                    delay = self._ended(i, proc, lived)
                    # It may have died holding the segment's lock (taken microseconds per request by the
                    # tenant table): freed if it cannot be taken within ``STUCK_S`` and the table names it
                    # the holder (never a live worker's hold).
                    if self.shared is not None and await asyncio.to_thread(self.tenants.free_stuck, i):
                        log.warning("worker %d died holding the shared segment's lock: freed", i)
                    restarting[i] = asyncio.create_task(self._restart(i, delay), name=f"restart-worker-{i}")
        finally:
            for task in restarting.values():
                task.cancel()
            await asyncio.gather(*restarting.values(), return_exceptions=True)

    def _clear_rows(self, i: int) -> None:
        """Zero worker ``i``'s rows of the shared segment: what it had in flight and queued died with it."""
        if self.shared is None:
            return
        self.shared.clear_row(i)  # nothing in flight (running totals kept)
        self.marks.clear_row(i)  # no queue mark, and its queue's places given back (fleet.FleetLimits)
        self.tenants.clear_row(i)  # nothing in flight against maxConcurrentRequests (buckets kept)

    def _ended(self, i: int, proc: BaseProcess, lived: float) -> float:
        """Worker ``i`` ended (died, or was killed for its heartbeat or its start): its rows of the shared
        segment cleared now, not at its restart, which may wait out a backoff of up to
        ``worker_health.RESTART_MAX_S`` (meanwhile its dead queue held the fleet's ``maxRequests`` and every
        other worker answered 429: review s21-wk M1); its reason kept for the restart's count, its slot's
        streak moved, logged with the reason and the restart's wait; that wait
        (``worker_health.restart_delay``)."""
        self._clear_rows(i)  # (``proc`` is joined: nothing of it writes its rows any more)
        reported = self.admin_ports[i] is not None or self.killed_age[i] is not None
        served = max(0.0, self.heartbeat[i] - self.reported_at[i]) if reported else 0.0
        killed = self.killed_age[i]
        reason = "exited" if killed is None else "wedged"
        self.why[i] = (
            f"exit code {proc.exitcode} after {lived:.1f}s" if killed is None
            else f"killed: no heartbeat for {killed:.1f}s"
        )  # fmt: skip
        if self.start_killed[i]:
            reason, self.why[i] = "start_timeout", f"killed: did not start within {_START_TIMEOUT_S:g}s"
        self.admin_ports[i] = None
        self.killed_age[i] = None
        self.start_killed[i] = False
        self.last_ready[i] = False
        self.streak[i] = worker_health.next_streak(self.streak[i], served)
        delay = worker_health.restart_delay(self.streak[i])
        self.ended_why[i] = reason
        log.error(
            "worker %d restarts %s (%s; streak %d: its slot's workers that ended before serving %gs; "
            "backoff 1s doubling to %gs)",
            i, "now" if delay == 0 else f"in {delay:g}s", self.why[i], self.streak[i], worker_health.STABLE_S,
            worker_health.RESTART_MAX_S,
        )  # fmt: skip
        return delay

    def check_heartbeat(self, i: int, proc: BaseProcess, now: float | None = None) -> bool:
        """Kill (SIGKILL) worker ``i`` if it reported (started) and its heartbeat is older than
        ``listen.workerTimeoutSeconds`` (0: never); True if killed. Its death is then seen by ``watch``,
        which restarts it as any dead worker. Why: the kernel keeps giving a wedged worker (its event loop
        blocked, the process stopped) its share of new connections (``SO_REUSEPORT``), which it never
        accepts, for as long as it stays wedged (gunicorn's ``--timeout`` heartbeat; review s20-qa M2)."""
        bound = self.cfg.worker_timeout_s
        if bound <= 0 or self.admin_ports[i] is None or proc.pid is None:
            return False
        age = (time.monotonic() if now is None else now) - max(self.heartbeat[i], self.awake_since)
        if age <= bound:
            return False
        log.error(
            "worker %d (pid %s) sent no heartbeat for %.1fs (listen.workerTimeoutSeconds %gs: its event loop "
            "is blocked or the process stopped); killing it (SIGKILL) to restart it", i, proc.pid, age, bound,
        )  # fmt: skip
        self.admin_ports[i] = None  # (not asked by the admin routes, not killed twice)
        self.killed_age[i] = age
        self.heartbeat_kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return True

    async def _restart(self, i: int, delay: float = 0.0) -> bool:
        """Start worker ``i`` again, after ``delay`` (a backoff: ``_ended``); False (``failed`` set) when it
        cannot be started (or the supervisor stops during the wait). A spawn that fails
        (out of processes, descriptors or memory: OSError) is no death (no worker ran): it is tried again
        after a pause doubling from ``_SPAWN_RETRY_S`` to ``_SPAWN_RETRY_MAX_S`` while the other workers
        serve; once spawns have failed in a row for ``spawn_give_up_s`` the supervisor stops with an error
        status, so a service manager restarts it (a watcher ended silently served on short-handed). Counted
        in ``restarts`` once the new worker is started."""
        if self.stopping:  # (a death seen one loop turn before SIGTERM: nothing spawned that no stop joins)
            return False
        if delay > 0:
            self.restart_due[i] = self.clock() + delay
            try:
                await self.sleep(delay)
            finally:
                self.restart_due[i] = None
            if self.stopping:
                return False
        first = self.clock()
        failures = 0  # this slot's, in a row (slots restart independently: ``watch``)
        try:
            while True:
                try:
                    await self.start_worker(i)
                    self.restarts[self.ended_why[i]] += 1
                    return True
                except OSError as e:
                    failures += 1
                    self.spawn_failures += 1
                    log.error("worker %d could not be started: %s", i, e)
                    if self.clock() - first >= self.spawn_give_up_s:
                        log.error("workers cannot be started; shutting down")
                        self.failed = True
                        return False
                pause = min(_SPAWN_RETRY_MAX_S, _SPAWN_RETRY_S * 2 ** min(failures - 1, 16))
                await self.sleep(pause)
                if self.stopping:
                    return False
        finally:
            self.spawn_failures -= failures

    async def stop_workers(self) -> None:
        """SIGTERM every worker and wait for their drains; each worker's rows of the shared segment are
        cleared as it ends, as ``watch`` clears a dead one's (which it no longer does once stopping): a
        worker killed during the drain (SIGKILL, the OOM killer) left its requests in flight in the others'
        view for good, so a worker still draining its flow-control queue kept its gate saturated on them
        and answered its queued requests 503 at the drain's end while the pool was idle (wk26)."""
        self.stopping = True
        alive = {i: p for i, p in enumerate(self.procs) if p is not None and p.is_alive()}
        for p in alive.values():
            if p.pid is None:  # never started: nothing to signal (pid 0 would be our own group)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.limits.drain_timeout_s + 10
        while alive:
            for i, p in list(alive.items()):
                if p.is_alive():
                    continue
                del alive[i]
                p.join()
                await self._ended_in_drain(i, p)
            if not alive:
                break
            if time.monotonic() >= deadline:
                for i, p in alive.items():
                    log.error("worker pid %s did not drain in time; killing it", p.pid)
                    p.kill()
                    p.join()
                    await self._ended_in_drain(i, p)
                break
            await asyncio.sleep(_DRAIN_POLL_S)

    async def _ended_in_drain(self, i: int, proc: BaseProcess) -> None:
        """Worker ``i`` ended after the stop began: its rows cleared (the others may still drain on them),
        and the segment's lock freed if it died holding it (as ``watch`` does: only when the tenant table
        names it the holder; review s26-rev-wkv26 F2)."""
        if self.shared is None:
            return
        self._clear_rows(i)
        # (a drain that ended holds no lock)
        if proc.exitcode != 0 and await asyncio.to_thread(self.tenants.free_stuck, i):
            log.warning("worker %d died holding the shared segment's lock: freed", i)

    # --- admin -------------------------------------------------------------------------------
    async def _fetch(
        self, port: int | None, path: str, limit_s: float | None = None
    ) -> tuple[int, bytes] | None:
        if port is None or self._session is None:
            return None
        try:
            limit = None if limit_s is None else aiohttp.ClientTimeout(total=limit_s)
            async with self._session.get(f"http://127.0.0.1:{port}{path}", timeout=limit) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _ask_ready(self, port: int | None) -> int | None:
        """A worker's ``/readyz`` status; ``worker_health.REFUSED`` when its admin port refuses or drops the
        connection (its process ended or is ending: ``refused_or_dropped``); None when no answer came in
        time (a busy loop: the kernel accepts for it, the answer is late) or the probe failed on the
        supervisor's side. Each probe is a fresh connection (``_probe_session``), so a drop is the
        worker's, never a pooled keep-alive connection it closed as the probe reused it."""
        session = self._probe_session
        if port is None or session is None:
            return None
        limit = aiohttp.ClientTimeout(total=_READYZ_FETCH_TIMEOUT_S)
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz", timeout=limit) as r:
                await r.read()
                return r.status
        except TimeoutError:  # (aiohttp's own time-outs are TimeoutErrors too)
            return None
        except aiohttp.ClientError as e:
            return worker_health.REFUSED if refused_or_dropped(e) else None

    async def _all(self, path: str, limit_s: float | None = None) -> list[tuple[int, bytes] | None]:
        return list(await asyncio.gather(*(self._fetch(p, path, limit_s) for p in self.admin_ports)))

    def reload_result(self, result: str) -> None:
        if result in ("invalid", "failed"):
            self.reload_failures[result] += 1
        self.last_reload_ok = result == "applied"
        if self.last_reload_ok:
            self.last_reload_at = time.time()

    def _own_metrics(self) -> str:
        lines = ["# HELP kvgate_gateway_worker_restarts_total Worker restarts by the supervisor, by reason "
                 "(exited: the worker died; wedged: killed for a heartbeat older than workerTimeoutSeconds; "
                 "start_timeout: killed for not starting within 60s)",
                 "# TYPE kvgate_gateway_worker_restarts_total counter"]  # fmt: skip
        restarts = self.restarts.items()
        lines += [f'kvgate_gateway_worker_restarts_total{{reason="{r}"}} {n}' for r, n in restarts]
        # (the supervisor's own log lines lost; each worker's are in its own /metrics: ``kvgate.stderrlog``)
        lines += ["# HELP kvgate_gateway_log_lines_dropped_total Log lines lost (all but the access lines): "
                  "stderr did not take them", "# TYPE kvgate_gateway_log_lines_dropped_total counter",
                  f"kvgate_gateway_log_lines_dropped_total {stderrlog.dropped()}"]  # fmt: skip
        if self.reload_failures:
            name, help_ = RELOADS_TOTAL
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            lines += [f'{name}{{result="{r}"}} {n}' for r, n in self.reload_failures.items()]
        for (name, help_), value in ((LAST_RELOAD_OK, int(self.last_reload_ok)),
                                     (LAST_RELOAD_AT, self.last_reload_at)):  # fmt: skip
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"

    async def _metrics(self, request: Request) -> Response:
        got = await self._all("/metrics")
        texts = [g[1].decode() if g is not None and g[0] == 200 else None for g in got]
        own = {"supervisor": self._own_metrics()}
        return Response(body=merge_metrics(texts, own), content_type=CONTENT_TYPE_LATEST)

    def slots(self, now: float | None = None) -> list[worker_health.Slot]:
        """Each worker slot as ``worker_health`` reads it: alive (and not dying), started, its heartbeat's
        age (counted from the supervisor's own thaw at most: ``check_heartbeat``), a backoff wait, its last
        end."""
        now = time.monotonic() if now is None else now
        out = []
        for i, p in enumerate(self.procs):
            due = self.restart_due[i]
            # (a killed process runs until it is a zombie, which ``is_alive``'s waitpid waits for: one
            # killed, or exiting, is not live any more: ``dying``)
            alive = p is not None and p.is_alive() and p.pid is not None and not dying(p.pid)
            out.append(worker_health.Slot(
                i, p.pid if p is not None else None, alive,
                self.admin_ports[i] is not None or self.killed_age[i] is not None,  # (killed: wedged still)
                now - max(self.heartbeat[i], self.awake_since),
                None if due is None else max(0.0, due - now), self.why[i],
            ))  # fmt: skip
        return out

    async def _healthz(self, request: Request) -> Response:
        """200 while a worker is live: up, busy (its heartbeat late but within the wedge bound: a loop
        doing legitimate blocking work) or starting; each worker not plainly up gets a line saying which
        and why (wedged, busy, restarting after a backoff and what ended the last one); a wedged worker's
        process counts live too (review s21-wrk M1: with ``workerTimeoutSeconds`` 0, "never", liveness
        must not kill the pod for a wedge either; with a bound the supervisor kills it). 503 when no
        worker process runs (every slot ended or waiting out a restart's backoff)."""
        bound = worker_health.wedge_bound(self.cfg.worker_timeout_s)
        status, text = worker_health.healthz(self.slots(), bound)
        return Response(status=status, text=text, content_type="text/plain")

    async def _readyz(self, request: Request) -> Response:
        """200 while at least ``listen.minReadyWorkers`` workers (default 1) are ready.

        Why not "all": as nginx's or HAProxy's master restarting a worker, one worker restarting must not
        take the whole pod out of rotation (with one replica that is an outage); it takes no connections
        until it is ready (its data port opens last), so the others serve meanwhile. Full capacity is
        still required at start: this port opens only once every worker has started. Set it to N where
        other replicas can absorb a pod at reduced capacity."""
        if self.stopping:
            return Response(status=503, text="draining", content_type="text/plain")
        # The workers whose loop turns (or is busy) asked all at once, for _READYZ_FETCH_TIMEOUT_S in all,
        # so the answer comes within a probe's timeout; one that does not answer in time counts as its
        # last answer while its heartbeat is within the wedge bound (busy), else as not ready; one whose
        # admin port refuses the connection is not ready (``_ask_ready``).
        bound = worker_health.wedge_bound(self.cfg.worker_timeout_s)
        slots = self.slots()
        ask = worker_health.asked(slots, bound)
        tasks = {
            i: asyncio.create_task(self._ask_ready(self.admin_ports[i])) for i in range(self.n) if ask[i]
        }
        if tasks:
            await asyncio.wait(tasks.values(), timeout=_READYZ_FETCH_TIMEOUT_S + 0.05)
        answers: list[int | None] = [None] * self.n
        # Read again after the wait: a worker that died meanwhile (or was being killed as it was asked,
        # its heartbeat still fresh) is down now, not busy (lead's finding W0, session 21); an answer from
        # a worker since replaced is its predecessor's, dropped.
        now = self.slots()
        for i, task in tasks.items():
            got = task.result() if task.done() else None
            task.cancel()
            if got is not None and now[i].pid == slots[i].pid:
                answers[i] = got
                self.last_ready[i] = got == 200
        slots = now
        need = self.cfg.min_ready_workers
        status, text = worker_health.readyz(slots, answers, self.last_ready, bound, need)
        return Response(status=status, text=text, content_type="text/plain")

    async def _debug_pick(self, request: Request) -> Response:
        for g in await self._all(request.path):
            if g is not None and g[0] == 200:
                return Response(body=g[1], content_type="application/json")
        return error_response(GatewayError(404, "no worker recorded a pick for that request id"))

    async def _aggregate(self, request: Request) -> Response:
        """The pool aggregate from the first worker that answers: workers share their in-flight counts
        (``shared_inflight``) and prefix insertions (gossip), so one worker's snapshot is the fleet's.
        ``tls`` / ``mtls`` say how this port serves it (the workers' private ports are plaintext)."""
        path = request.path + (f"?{request.query}" if request.query else "")
        for port in self.admin_ports:
            got = await self._fetch(port, path)
            if got is None:
                continue
            status, body = got
            if status == 200:
                doc = orjson.loads(body)
                tls = self.cfg.admin_tls
                doc["tls"], doc["mtls"] = tls is not None, tls is not None and tls.client_ca_pem is not None
                body = orjson.dumps(doc)
            return Response(status=status, body=body, content_type="application/json")
        return error_response(GatewayError(503, "no live worker answered for the pool aggregate"))

    async def _not_found(self, request: Request) -> Response:
        return error_response(GatewayError(404, f"no route for {request.method} {request.path}"))

    async def serve_admin(self) -> None:
        if self.cfg.admin_port is None:
            return
        from kvgate.gateway.server import admin_ssl, route_check

        routes: dict[str, Handler] = {  # (GET and HEAD only: 405 otherwise, as a single process's)
            "/metrics": get_only(self._metrics),
            "/healthz": get_only(self._healthz),
            "/readyz": get_only(self._readyz),
            AGGREGATE_PATH: get_only(self._aggregate),
        }
        front = FrontServer.with_limits(
            routes, self._not_found, self.cfg.limits,
            prefix_routes={"/debug/picks/": get_only(self._debug_pick)},
        )  # fmt: skip  # (as a single process's admin port: every front limit, the same knobs on reload)
        # No route (404) or a method the path does not take (405) answered from the head, no 100 Continue,
        # as a single process's admin port (qa32a Q5; late-a32).
        front.route_check = route_check(front, set(), set(routes), ("/debug/picks/",))
        self._admin_front = front
        loop = asyncio.get_running_loop()
        self._admin = await loop.create_server(
            front.protocol, self.cfg.host, self.cfg.admin_port, reuse_address=True, ssl=admin_ssl(self.cfg)
        )
        self.admin_port = self._admin.sockets[0].getsockname()[1]

    # --- whole lifecycle ---------------------------------------------------------------------
    async def run(self) -> int:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_ADMIN_FETCH_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0),
        )
        self._probe_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reload_task = None
        snapshot_dir = None
        try:  # the directories inside: the cleanup below removes them if a later step fails
            _start_resource_tracker()
            for path in clean_stale_dirs():
                log.warning("removed %s: left by a supervisor that is gone", path)
            if self.config_path is not None:
                snapshot_dir, self._locks[snapshot_dir] = private_dir("config")  # 0700: only we write it
                self.snapshot = os.path.join(snapshot_dir, "config.pickle")
                self.write_snapshot(self.file_cfg)
                watch = _WorkersReload(self, self.config_path, self.stamp, self.load)
                loop.add_signal_handler(signal.SIGHUP, watch.trigger)
                reload_task = asyncio.create_task(watch.run())
            else:  # (its workers ignore SIGHUP without --config: ``_worker_main``)
                serve_on_sighup(loop, log, "kvgate serve --workers without --config")
            if self.n > 1:
                from kvgate.flowcontrol import fleet
                from kvgate.gateway.shared_inflight import SharedInFlight

                self.gossip_dir, lock = private_dir("gossip")  # short: unix socket paths max 107 bytes
                self._locks[self.gossip_dir] = lock
                from kvgate.gateway.shared_tenants import SharedTenants, segment_size

                at = _tenants_offset(self.n)
                self.shared = SharedInFlight.create(self.n, self.ctx.Lock(), extra=at + segment_size(self.n))
                self.marks = fleet.FleetMarks(self.shared.extra, self.n, -1, table=inflight_layout())
                self.tenants = SharedTenants(self.shared.extra[at:], self.n, -1, self.shared.lock)
                from kvgate.gateway.shared_responses import SharedResponses, segment_name

                self.responses = SharedResponses.create(self.n, segment_name(self.shared.name))
            try:
                await asyncio.gather(*(self.start_worker(i) for i in range(self.n)))
            except OSError as e:  # the spawn failed (out of processes, descriptors, memory)
                print(f"kvgate serve: a worker could not be started: {e}", file=sys.stderr, flush=True)
                return 1
            if any(p is None for p in self.admin_ports):
                print("kvgate serve: a worker failed to start", flush=True)
                return 1
            await self.serve_admin()
            print(
                f"kvgate serve: listening on http://{self.cfg.host}:{self.port} ({self.n} workers)"
                + (
                    f", admin on {'https' if self.cfg.admin_tls else 'http'}://{self.cfg.host}:{self.admin_port}"
                    if self.admin_port
                    else ""
                ),
                flush=True,
            )
            watcher = asyncio.create_task(self.watch())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({watcher, stopped}, return_when=asyncio.FIRST_COMPLETED)
            watcher.cancel()
            stopped.cancel()
            if watcher.done() and not watcher.cancelled() and (exc := watcher.exception()) is not None:
                # Not a stop: the workers would go unwatched (none restarted); an error status, so a
                # service manager (systemd Restart=on-failure) starts the gateway again.
                log.error("the worker watch failed; shutting down", exc_info=exc)
                self.failed = True
            print("kvgate serve: draining", flush=True)
            return 1 if self.failed else 0
        finally:
            if reload_task is not None:
                reload_task.cancel()
            await self.stop_workers()
            if self._admin is not None:
                self._admin.close()
            if self._reserve is not None:
                self._reserve.close()
            if self.marks is not None:
                self.marks.close()
            if self.tenants is not None:
                self.tenants.close()
            if self.responses is not None:
                self.responses.close()
            if self.shared is not None:
                self.shared.close()
            if self.gossip_dir is not None:
                shutil.rmtree(self.gossip_dir, ignore_errors=True)
            if snapshot_dir is not None:
                shutil.rmtree(snapshot_dir, ignore_errors=True)
            for lock in self._locks.values():
                os.close(lock)
            self._locks.clear()
            await self._session.close()
            await self._probe_session.close()


def refused_or_dropped(e: aiohttp.ClientError) -> bool:
    """A ``/readyz`` probe's failure that is the worker's answer: its admin port refused the connection, or
    reset or closed it unanswered (its process ended or is ending). Not the supervisor's own failures to
    connect (out of file descriptors, ``EMFILE``; no local port, ``EADDRNOTAVAIL``): those say nothing of
    the worker (review s21-fixes-a L8)."""
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(e, aiohttp.ClientOSError) and e.errno in (errno.ECONNREFUSED, errno.ECONNRESET)


def _start_resource_tracker() -> None:
    """multiprocessing's resource tracker (it unlinks the shared memory and semaphores should the supervisor
    die) started now with SIGHUP blocked, before anything registers with it. The tracker is a child in the
    supervisor's process group that ignores SIGINT and SIGTERM only: a process-group SIGHUP (``kill -HUP
    -PGID``, a terminal's hang-up), meant as a reload, killed it, and the shared memory went untracked. It
    keeps the blocked mask it inherits (it unblocks only those two), so the SIGHUP stays pending there."""
    from multiprocessing import resource_tracker

    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


# /proc/<pid>/stat's flags bit: the process has begun to exit (``do_exit``).
_PF_EXITING = 0x4
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def dying(pid: int) -> bool:
    """Has the process ``pid`` (a child not yet reaped, so the pid is still its) been killed or begun to
    exit? A SIGKILL is pending (``ShdPnd``/``SigPnd`` in /proc/<pid>/status) or it is exiting
    (``PF_EXITING``): ``waitpid`` reports it only once it is a zombie, after its memory is freed, 1-70 ms
    later (measured: a worker of 0-2 GiB, load 4). Linux (/proc); elsewhere, or when unreadable, False."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if int(f.read().rsplit(b")", 1)[1].split()[6]) & _PF_EXITING:
                return True
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"ShdPnd:", b"SigPnd:")) and int(line.split()[1], 16) & _SIGKILL_BIT:
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def _zombie_children(parent: int) -> set[int]:
    """The pids of ``parent``'s children that exited and were not reaped (state Z in /proc)."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                if int(ppid) == parent and state == "Z":
                    out.add(int(entry))
    return out


def run_workers(
    cfg: GatewayConfig,
    workers: int,
    config_path: str | None = None,
    file_cfg: GatewayConfig | None = None,
    stamp: FileStamp | None = None,
    load: Callable[[str], GatewayConfig] = load_gateway_config,
) -> int:
    """Run the supervisor until SIGTERM/SIGINT (or workers that keep dying); its exit status.
    ``file_cfg``: ``config_path`` as loaded (before flags); ``stamp``: its ``file_stamp`` from before the
    load; ``load``: a reload's read and check of ``config_path``."""
    import uvloop

    sup = Supervisor(cfg, workers, config_path, file_cfg, stamp, load)
    sup.reserve_port()
    return uvloop.run(sup.run())
