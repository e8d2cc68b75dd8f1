"""Fetch every cluster's pool aggregate (HTTP/HTTPS, mTLS optional) and its EPP's gRPC health, periodically.

One failed fetch leaves the last snapshot in place: the policy's TTL, on the clock time of the last good
fetch, decides when it stops counting (so a cut link turns into "unknown" after ``ttl_s``, never into
"idle"). Responses over the aggregate size cap are refused.

The EPP health check's host name is looked up as the aggregate's and the hub probe's are (``hub._lookup``:
getaddrinfo on the bounded daemon threads, its IDNA form, answers kept ``hub.LOOKUP_TTL_S``) and gRPC dials
every address, a channel per family (``health_targets``; fixk8s18), not gRPC's own resolver (k8s18,
closing-s17 KV/hub): gRPC's c-ares resolver refused an internationalised name the clusters file takes
("Misformatted domain name": the EPP counted unhealthy for good while its aggregate was fetched) and answers
differently from getaddrinfo (no NSS, no IDNA).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from grpc_health.v1 import health_pb2, health_pb2_grpc
from yarl import URL

from kvgate.aio import cancel_and_wait, stop_to_the_end
from kvgate.datalayer.aggregate import MAX_RESPONSE_BYTES, PoolAggregate, decode
from kvgate.k8s.lease import check_one_time
from kvgate.multicluster.clusters import TlsOptions, idna_host
from kvgate.multicluster.hub import _lookup, _NotTried
from kvgate.multicluster.state import ClusterState

log = logging.getLogger("kvgate.multicluster.fetcher")
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# A cluster that comes back is seen within about a second (gRPC's default reconnect back-off grows to 120 s).
MAX_FAILING = 1024  # clusters whose failing streak is kept (bounded: clusters come and go with reloads)
# A failing streak (fetches failing in a row) is logged (WARNING) at this many failed rounds: a single
# blip (one timeout) says nothing, an aggregate that keeps failing is said within a second at the default
# ``refresh_s`` (qa34b-F1). An answer refused as no pool's aggregate is said at once (once per reason).
FETCH_SAID_AFTER = 2
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]


def client_ssl(tls: TlsOptions) -> ssl.SSLContext | None:
    if tls.ca is None and tls.cert is None:
        return None
    ctx = ssl.create_default_context(cafile=tls.ca)
    if tls.cert is not None:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


CERT_CHECK_S = 5.0  # how often TLS files are re-read to catch a rotation (same paths, new bytes)

Material = tuple[bytes | None, bytes | None, bytes | None]  # (CA, key, cert) as read from the files


def tls_material(tls: TlsOptions) -> Material:
    """The content of the TLS files (a rotated certificate keeps its path, not its bytes); OSError while a
    file is missing (mid-rotation)."""

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return read(tls.ca), read(tls.key), read(tls.cert)


class ProbeLookups(AbstractResolver):
    """The fetcher's host-name lookups (aiohttp's resolver) on the hub probe's lookups (``hub._lookup``: a
    daemon thread each, one per name at a time, which a lookup of a name already being looked up joins, at
    most ``hub.MAX_LOOKUPS`` waited on and ``hub.MAX_LOOKUP_THREADS`` in all at once, answers kept
    ``hub.LOOKUP_TTL_S``), each waited on ``timeout_s()`` (kvhub17). aiohttp's default resolver ran
    ``getaddrinfo`` in the loop's default executor: a name server that does not answer kept a worker per host
    name for the resolver's whole time-out (tens of seconds), so a few clusters named by host filled the pool
    (6 workers on 2 cores) and every other user of it waited behind them (the KV subscriber's and the probe's
    lookups are on threads of their own since kv14 and s16; ``asyncio.to_thread`` and aiohttp's other lookups
    are not), and ``asyncio.run``'s end waited for them. A lookup slower than ``timeout_s()`` fails its round,
    and its answer, kept when it comes, serves the next rounds (review s17-kvhub M1: as aiohttp's shielded,
    cached lookups did). A lookup that did not start (past either bound) fails its fetch (an OSError, EAGAIN:
    the last snapshot stays, as for any failed fetch)."""

    def __init__(self, timeout_s: Callable[[], float]) -> None:
        self.timeout_s = timeout_s

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            targets, _took = await _lookup(asyncio.get_running_loop(), host, port, self.timeout_s())
        except _NotTried:
            raise OSError(errno.EAGAIN, f"{host}: not looked up (the most lookups at once are running, "
                                        "or its thread could not start)") from None  # fmt: skip
        out: list[ResolveResult] = []
        for fam, addr in targets:
            if family not in (socket.AF_UNSPEC, fam) or fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip, at = addr[0], addr[1]
            if fam == socket.AF_INET6 and len(addr) > 3 and addr[3]:  # (a scope id: numeric, no lookup)
                ip, at_s = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                at = int(at_s)
            out.append(ResolveResult(hostname=host, host=ip, port=at, family=fam, proto=0,
                                     flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))  # fmt: skip
        if not out:
            raise OSError(errno.EADDRNOTAVAIL, f"{host}: no address of the family asked for")
        return out

    async def close(self) -> None:
        pass


@dataclass(slots=True)
class _Streak:
    """A cluster's aggregate fetches failing in a row: at ``url`` (a reload that changes it starts a new
    streak), how many, the failure logged and the refusal reason logged (None: none yet; kept apart, so a
    refused answer does not hide the failing fetches after it, rev-e34-F2)."""

    url: str
    failed: int = 0
    said: str | None = None
    refused: str | None = None


class Fetcher:
    """``apply`` (a clusters-file reload) takes new TLS options and interval; the TLS files are also
    re-read every ``cert_check_s`` and the HTTPS client rebuilt when their content changed; the health
    channels of clusters no longer listed are closed on the next round."""

    def __init__(
        self,
        states: Callable[[], Sequence[ClusterState]],
        *,
        interval_s: float = 0.5,
        timeout_s: float = 1.0,
        tls: TlsOptions | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``clock`` and ``sleep``: one time (both or neither, ``check_one_time``; default the loop's) for
        the rounds' period, the aggregates' fetch times and the TLS files' checks (fixk8s17, review s17-k8s
        F3: the rounds slept on ``asyncio.sleep`` whatever the clock)."""
        check_one_time(clock, sleep)
        clock = clock or time.monotonic
        self.sleep = sleep or asyncio.sleep
        self.states = states
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.tls = tls
        self.ssl = client_ssl(tls) if tls is not None else None
        self._tls_seen = tls_material(tls) if tls is not None else None
        self.cert_check_s = CERT_CHECK_S
        self._tls_checked = clock()
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}  # gRPC target -> its channel (``health_targets``)
        self._used: set[str] = set()  # the targets this round's health checks used
        self.rounds = 0
        # Called with a cluster's name for each answer refused as no pool's aggregate (``_refused``; the
        # global gateway's ``kvgate_multicluster_aggregates_refused_total``).
        self.on_refused: Callable[[str], None] | None = None
        # Clusters whose aggregate fetches fail now (``_Streak``): a streak says one WARNING (a refused
        # answer: one per reason) and its end, if it said one, one INFO.
        self._failing: dict[str, _Streak] = {}

    def _new_session(self) -> aiohttp.ClientSession:
        # (host names looked up on the probe's bounded threads, not the loop's default executor: kvhub17;
        # they keep answers LOOKUP_TTL_S, so no second cache in aiohttp: review s17-fixes-a L2)
        resolver = ProbeLookups(lambda: self.timeout_s)
        conn = aiohttp.TCPConnector(limit=0, ssl=self.ssl or True, resolver=resolver, use_dns_cache=False)
        return aiohttp.ClientSession(connector=conn)

    async def start(self) -> None:
        self._session = self._new_session()
        await self.refresh()
        self._task = asyncio.create_task(self._loop())

    def apply(self, tls: TlsOptions | None, interval_s: float) -> None:
        """New options from a reload; the TLS files are re-read on the next round either way."""
        self.interval_s = interval_s
        self.tls = tls
        self._tls_checked = float("-inf")

    async def _check_tls(self) -> None:
        now = self.clock()
        if now - self._tls_checked < self.cert_check_s:
            return
        self._tls_checked = now
        try:
            seen = tls_material(self.tls) if self.tls is not None else None
            if seen == self._tls_seen:
                return
            ssl_ctx = client_ssl(self.tls) if self.tls is not None else None
        except (OSError, ssl.SSLError) as e:  # mid-rotation: keep the working client, try again later
            log.warning("aggregate TLS files not loaded, keeping the current ones: %s", e)
            return
        log.info("aggregate TLS files changed: new fetches use them")
        self._tls_seen, self.ssl = seen, ssl_ctx
        old, self._session = self._session, self._new_session()
        if old is not None:
            await old.close()  # between rounds: no fetch is using it

    async def _close_gone(self) -> None:
        """Closes the health channels this round did not use (a cluster removed, or its name now
        resolving to other addresses)."""
        for target in [t for t in self._channels if t not in self._used]:
            await self._channels.pop(target).close()

    async def stop(self) -> None:
        """(To its end also when cancelled meanwhile, the cancellation raised after: ``stop_to_the_end``.)"""
        await stop_to_the_end(self._stop(), "the aggregate fetcher's stop", log)

    async def _stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, "the aggregate fetcher", log)
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            await self.sleep(self.interval_s)
            await self.refresh()

    async def refresh(self) -> None:
        if self._session is not None:
            await self._check_tls()
        self._used = set()
        states = self.states()
        if self._failing:  # (a cluster removed, or its URL changed, ends its streak: the next is new)
            urls = {st.name: st.spec.aggregate for st in states}
            self._failing = {k: v for k, v in self._failing.items() if urls.get(k) == v.url}
        await asyncio.gather(*(self._one(s) for s in states))
        await self._close_gone()
        self.rounds += 1

    async def _one(self, st: ClusterState) -> None:
        await asyncio.gather(self._aggregate(st), self._health(st))

    async def _aggregate(self, st: ClusterState) -> None:
        url = st.spec.aggregate
        if url is None or self._session is None:
            return
        got: PoolAggregate | str  # (the snapshot, or why there is none)
        refused = False  # (an answer that is no pool's aggregate: malformed, over the cap, impossible)
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with self._session.get(url, timeout=timeout) as resp:
                ok = resp.status == 200
                raw = await resp.content.read(MAX_RESPONSE_BYTES + 1) if ok else b""
            got = decode(raw) if ok else f"HTTP {resp.status}"
        except msgspec.MsgspecError as e:
            got, refused = f"{type(e).__name__}: {e}", True
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            got = f"{type(e).__name__}: {e}"
        if st.spec.aggregate != url:
            # A reload removed (or changed) the URL meanwhile: the answer is no longer this cluster's, and
            # would put back the snapshot and fetch time ``respec`` dropped (review s23-rev-hub23 F1).
            log.debug("aggregate from %s dropped: %s is no longer its aggregate", st.name, url)
        elif isinstance(got, str):
            st.fetch_error = got
            streak = self._failing.get(st.name)
            if streak is None:
                if len(self._failing) >= MAX_FAILING:
                    self._failing.clear()
                streak = self._failing[st.name] = _Streak(url)
            streak.failed += 1
            if refused:
                self._refused(st.name, streak, got)
            elif streak.said is None and streak.failed >= FETCH_SAID_AFTER:
                streak.said = got
                log.warning("aggregate from %s (%s) failed %d times in a row: %s; its last snapshot counts "
                            "until ttl_s, then the cluster is unknown (logged once until a fetch succeeds)",
                            st.name, URL(url).with_user(None), streak.failed, got)  # fmt: skip
            else:
                log.debug("aggregate from %s failed: %s", st.name, got)
        else:
            streak = self._failing.pop(st.name, None)
            if streak is not None and (streak.said is not None or streak.refused is not None):
                log.info("aggregate from %s taken again", st.name)
            st.set_aggregate(got, self.clock())

    def _refused(self, cluster: str, streak: _Streak, why: str) -> None:
        """An answer refused as no pool's aggregate (``decode``: an impossible one included, qa25 F1): as a
        failed fetch (the last snapshot ages out at ``ttl_s``, then the cluster is unknown), counted
        (``on_refused``) and logged once while the reason stays the same."""
        if self.on_refused is not None:
            self.on_refused(cluster)
        if streak.refused != why:
            streak.refused = why
            log.warning("aggregate from %s refused (as a failed fetch): %s", cluster, why)

    async def _health(self, st: ClusterState) -> None:
        """One round's EPP health check of ``st``, within ``timeout_s`` in all (the lookup's time is taken
        from the RPCs'): a channel per address family its name answered (``health_targets``), asked at
        once; healthy when one answers SERVING (the others cancelled then), else unhealthy. The verdict
        lands only while ``st``'s spec still has the address checked (``_verdict``)."""
        addr = st.spec.health
        if addr is None:  # (none, or removed by a reload: the last verdict no longer stands)
            st.healthy = None
            return
        try:
            targets, took = await health_targets(addr, self.timeout_s)
        except _NotTried:  # (past the lookups' bounds: no observation, the last verdict stays)
            log.debug("EPP health of %s: %s not looked up (the lookups' bounds)", st.name, addr)
            return
        except (TimeoutError, OSError, ValueError) as e:  # (gaierror; UnicodeError: a name IDNA refuses)
            log.debug("EPP health of %s: %s not resolved: %s", st.name, addr, e)
            _verdict(st, addr, False)
            return
        left = self.timeout_s - took  # (> 0: a lookup that took the whole timeout raised TimeoutError)
        checks = [asyncio.ensure_future(self._check(t, left)) for t in targets]
        try:
            for done in asyncio.as_completed(checks):
                if await done:
                    _verdict(st, addr, True)
                    return
            _verdict(st, addr, False)
        finally:
            for c in checks:
                c.cancel()
            await asyncio.gather(*checks, return_exceptions=True)

    async def _check(self, target: str, timeout_s: float) -> bool:
        """Whether the EPP at ``target`` (a gRPC target: an address, ``ipv4:...`` or ``ipv6:...``) answers
        SERVING for the ext_proc service within ``timeout_s``, on the channel kept for ``target``."""
        self._used.add(target)
        ch = self._channels.get(target)
        if ch is None:
            ch = self._channels[target] = grpc.aio.insecure_channel(target, options=RECONNECT)
        try:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=EXT_PROC_SERVICE), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _verdict(st: ClusterState, addr: str, healthy: bool) -> None:
    """``st``'s EPP health, from a check of ``addr``, unless a reload changed or removed its address while
    the check was in flight (the aggregate's race, review s23-rev-hub23 F1, in the health check: the old
    address's verdict stood on a cluster nothing checks, or on its new address, until the next round)."""
    if st.spec.health == addr:
        if st.set_health(healthy):  # (it failed after a stall, and answers again: qa27 Q7)
            log.info("cluster %s: its EPP's health check answers again: Endpoint mode back", st.name)
    else:
        log.debug("EPP health of %s dropped: %s is no longer its health address", st.name, addr)


async def health_targets(addr: str, timeout_s: float) -> tuple[list[str], float]:
    """The gRPC targets of an EPP health address (``host:port``, an IPv6 host in brackets) and how long its
    lookup took: an address as it is (0 s); a host name looked up on the hub's bounded lookups
    (``hub._lookup``, its IDNA form: ``idna_host``) within ``timeout_s``, its addresses sorted (one channel
    while the answer stays the same) per family, ``ipv4:a:port,b:port`` and ``ipv6:[a]:port,...`` (each
    one that has addresses: a target's scheme takes one family), which gRPC dials without a resolver of its
    own, trying each address of a target in turn (pick_first), as the aggregate fetch and the hub probe try
    every address of both families (review s18-k8s M1). ``_NotTried`` past the lookups' bounds;
    TimeoutError, OSError (gaierror) or ValueError otherwise."""
    host, _, port_s = addr.rpartition(":")
    host, port = host.strip("[]"), int(port_s)
    try:
        ipaddress.ip_address(host)
        return [addr], 0.0  # (gRPC takes an address as it is: no lookup)
    except ValueError:
        pass
    found, took = await _lookup(asyncio.get_running_loop(), idna_host(host), port, timeout_s)
    v4 = sorted({a[0] for family, a in found if family == socket.AF_INET})
    v6 = sorted({a[0] for family, a in found if family == socket.AF_INET6})
    targets = ["ipv4:" + ",".join(f"{a}:{port}" for a in v4)] if v4 else []
    targets += ["ipv6:" + ",".join(f"[{a}]:{port}" for a in v6)] if v6 else []
    if targets:
        return targets, took
    raise OSError(errno.EADDRNOTAVAIL, f"{host}: no IPv4 or IPv6 address")
