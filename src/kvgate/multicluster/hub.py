"""The hub EPP (``kvgate epp --clusters FILE``): an Endpoint Picker whose candidates are clusters.

Each cluster's Parent-mode gateway (``gateway: host:port``; a host name as the address it resolves to,
``gateway_names``) is one ``Endpoint`` in the store; the ``ClusterDirector`` answers the ext_proc session's
``pick`` with the gateway of the cluster the policy puts first, alone (Envoy's ``ORIGINAL_DST`` cluster
takes one address), or with ``destination_fallbacks`` the rest after it as fallbacks, which Envoy's Override
Host policy may try. Parent mode only: ext_proc's answer is one
destination header decided inside a synchronous pick, so the hub cannot ask a remote EPP for a pod in the
middle of it (Endpoint mode is the global ``kvgate serve --clusters``'s job).

TTFT evidence takes the global gateway's path (``ClusterState.dispatched(now)`` / ``observe_ttft`` /
``finished``): a streamed request waits in its cluster's state from dispatch to its first token (the
ext_proc session's first SSE output), so the ``kvgate`` policy sees the same censored and answered TTFTs
in the hub as in ``kvgate serve --clusters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter

from kvgate.aio import cancel_all_and_wait, cancel_and_wait, stop_to_the_end
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.httpfront.metrics import ReloadMetrics
from kvgate.multicluster.clusters import (
    REQUEST_TIMEOUT_KEY,
    ClustersConfig,
    ClustersError,
    ClusterSpec,
    gateway_literal,
    idna_host,
)
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy, Policy, make_policy, prompt_key
from kvgate.multicluster.state import ClusterState
from kvgate.scheduling.types import InferenceRequest, NoCapacityError, PickResult

if TYPE_CHECKING:
    from kvgate.multicluster.gateway_names import GatewayNames

log = logging.getLogger(__name__)
# The hub EPP's count of aggregate answers refused (``Fetcher.on_refused``), on the process registry its
# metrics port serves; the global gateway counts the same on its own registry.
AGGREGATES_REFUSED = Counter(
    "kvgate_multicluster_aggregates_refused_total",
    "Aggregate answers refused as no pool's (malformed, over the size cap, impossible numbers)",
    ["cluster"],
)

CLUSTER_LABEL = "kvgate.io/cluster"
POOL = "clusters"  # the store pool of the hub EPP's endpoints (the clusters' gateways)
MAX_WAITS = 65536  # streamed requests tracked to their first token (bounded: a lost finish cannot grow it)
_ABANDONED = -1  # ``_status`` of a request whose client left before its cluster's response headers
_CUT = -2  # ``_status`` of a request cut at ``limits.requestTimeoutSeconds`` (``on_cut`` charged it, or not)
# A client that left before its cluster's response headers hides whether Envoy could connect to the
# cluster's gateway (with fallbacks, Envoy moves on silently; the served address comes only with the
# headers): the hub then opens a TCP connection to that gateway itself, within PROBE_TIMEOUT_S (the
# global router's connect timeout). At most one probe per cluster in flight, and none within
# PROBE_EVERY_S of the cluster's last one (bounded work under a storm of clients leaving).
# The probe runs from the EPP's network, not Envoy's (review s15-labels M1): an EPP that cannot reach a
# gateway Envoy can reach (egress NetworkPolicy, split DNS, an allow-list of Envoy's addresses) would see
# a healthy cluster down. So a failed probe alone backs nothing off; a cluster is backed off only when
# (1) a second probe fails, started PROBE_EVERY_S or more and at most SUSPECT_FOR_S after the last failed
# one started (both measure probe starts: review s16-hard I1), with no request to the cluster answered
# well in between (``_suspect``), and (2) another cluster is available to take its requests: the probe
# can never take the last available cluster (a single-cluster deployment) down. A failure older than
# SUSPECT_FOR_S corroborates nothing (review s15-fixes-a I1: an idle cluster's failures hours apart backed
# it off); a gateway that keeps failing stays suspected, each failure renewing the suspicion.
PROBE_TIMEOUT_S = 1.0
PROBE_EVERY_S = 1.0
SUSPECT_FOR_S = 30.0
MAX_TARGETS = 8  # a host name's addresses a probe connects to at once (``connects``)
MAX_LOOKUPS = 32  # host-name lookups no wait gave up on yet (the probe's and the fetcher's) at once
# host-name lookup threads at once in all, given-up (hung) ones included: the hard bound (``_Lookups``)
MAX_LOOKUP_THREADS = 256
LOOKUP_TTL_S = 10.0  # how long a lookup's answer is kept (aiohttp's ttl_dns_cache; ``_Lookups``)
MAX_KEPT = 1024  # host names whose answers are kept at once (the oldest dropped first)
# Envoy's default cluster ``connect_timeout``: a bound at or under it lets a cut come while Envoy still waits
# on a blackholed primary, and the cut walk then charges a fallback Envoy never tried (``bound_warning``).
ENVOY_CONNECT_TIMEOUT_S = 5.0


def lists(cfg: ClustersConfig) -> bool:
    """Whether a destination can hold more than one gateway: two or more, or clusters from a ``kubernetes:``
    section (with fallbacks named at all: ``ClusterDirector.fallbacks``)."""
    return cfg.kubernetes is not None or sum(1 for c in cfg.clusters if c.gateway is not None) > 1


def bound_warning(cfg: ClustersConfig, fallbacks: bool | None = None) -> str | None:
    """The start-up (and reload) warning for a request bound at or under Envoy's default ``connect_timeout``
    where a destination can hold fallbacks (``fallbacks``, None: the file's ``destination_fallbacks``; and
    ``lists``), else None: the hub cannot see Envoy's own setting, only that the default would be too long.
    With one address named there is no fallback to charge wrongly."""
    bound = cfg.request_timeout_s
    named = cfg.destination_fallbacks if fallbacks is None else fallbacks
    if not 0 < bound <= ENVOY_CONNECT_TIMEOUT_S or not named or not lists(cfg):
        return None
    return (f"limits.{REQUEST_TIMEOUT_KEY} ({bound:g}s) is at or under Envoy's default connect_timeout "
            f"({ENVOY_CONNECT_TIMEOUT_S:g}s): unless the connect_timeout of the Envoy cluster that connects "
            "to the cluster gateways is set well under the bound, a cut while Envoy still waits on a primary "
            "that drops its SYNs charges (backs off) a fallback Envoy never tried (docs/multicluster.md, "
            "'The hub EPP's request bound')")  # fmt: skip


def hub_check(cfg: ClustersConfig) -> None:
    """What the hub EPP refuses in a clusters file that parses (``ClustersFile.check``: exit 2 at the start,
    the last good file kept at a reload): two clusters whose gateways are literally one address
    (``gateway_literal``: the same IP address and port, however spelt, or the same host name as the hub
    looks it up). The hub's store is keyed by address, so one of them could never be picked. Names that only
    resolve alike stay a WARNING (``ClusterDirector.apply``)."""
    seen: dict[tuple[str, int], tuple[int, ClusterSpec]] = {}
    for i, spec in enumerate(cfg.clusters):
        if spec.gateway is None:
            continue
        first = seen.setdefault(gateway_literal(spec.gateway), (i, spec))
        if first[1] is not spec:
            j, other = first
            raise ClustersError(
                f"clusters[{i}].gateway",
                f"{spec.gateway!r} (cluster {spec.name}) is the address of clusters[{j}].gateway "
                f"{other.gateway!r} (cluster {other.name}): the hub EPP names one cluster per gateway "
                "address, so one of them could never be picked; give each cluster its own gateway",
            )


class ClusterDirector:
    """The ``RequestDirector`` of the hub EPP (pick, dispatch/first-token/finish accounting)."""

    def __init__(
        self,
        cfg: ClustersConfig,
        policy: str | Policy = "kvgate",
        *,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,  # the policy's randomness; None: from os.urandom
        probe: Callable[[str], Awaitable[bool | None]] | None = None,  # can a gateway be connected to (tests)
        fallbacks: bool | None = None,  # --destination-fallbacks; None: the clusters file's key (default off)
    ) -> None:
        self.clock = clock
        self.cfg = cfg
        self.fallbacks_flag = fallbacks
        # Host-name gateways' addresses (``HubFeed`` sets it; None: each gateway named as written, tests).
        self.names: GatewayNames | None = None
        self.probe = probe or connects
        # cluster -> its connect probe in flight (``on_abandoned``); cluster -> when its last one started.
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._probed_at: dict[str, float] = {}
        # cluster -> when a probe of it that failed last started, with no request to it succeeded since
        # (``_probe``; a suspicion older than SUSPECT_FOR_S is over).
        self._suspect: dict[str, float] = {}
        # cluster -> its gateway's ``GET /healthz`` probe after a cut before the head (``on_cut``).
        self._live_probes: dict[str, asyncio.Task[None]] = {}
        self.policy = (
            make_policy(policy, ttl_s=cfg.ttl_s, local=cfg.local, seed=seed)
            if isinstance(policy, str)
            else policy
        )
        self.store = EndpointStore()
        self.states: dict[str, ClusterState] = {}
        self._shared: set[tuple[str, str, str]] = set()  # gateways at one address, warned (``apply``)
        # id(request) -> (cluster, the cluster state's token): requests in flight, streamed ones waiting
        # there for their first byte (the session holds the request object from dispatch to finish, so its
        # id is unique then). The dispatch time is the cluster state's, under that token.
        self._waits: dict[int, tuple[str, int]] = {}
        # id(request) -> the HTTP status its cluster's gateway answered (``on_answered``), until its end.
        self._status: dict[int, int] = {}
        # id(request) -> the policy's request from its pick (model loads, cached shares, prefix key per
        # cluster), until its dispatch (bounded).
        self._loads: dict[int, ClusterRequest] = {}
        self.apply(cfg)

    @property
    def fallbacks(self) -> bool:
        """Whether the destination names the other clusters' gateways after the chosen one: the flag, else
        the clusters file's ``destination_fallbacks`` as last reloaded; off by default, as the shipped
        Envoy cluster (``ORIGINAL_DST``) takes one address and answers a list 503."""
        if self.fallbacks_flag is not None:
            return self.fallbacks_flag
        return bool(self.cfg.destination_fallbacks)

    def apply(self, cfg: ClustersConfig) -> None:
        self.cfg = cfg
        old = self.states
        self.states = {}
        eps: list[Endpoint] = []
        taken: dict[str, str] = {}  # address -> the cluster named by it
        shared: set[tuple[str, str, str]] = set()  # (address, its cluster, one left out)
        names = self.names
        if names is not None:
            names.want({s.gateway: s.name for s in cfg.clusters if s.gateway is not None})
        for spec in cfg.clusters:
            if spec.gateway is None:
                continue  # Parent mode only: a cluster without a gateway cannot be sent to from here
            st = old.get(spec.name) or ClusterState(spec)
            st.respec(spec)
            self.states[spec.name] = st
            address = spec.gateway if names is None else names.address(spec.gateway)
            if address is None:  # (a host name not resolved yet: nothing Envoy could route to)
                continue
            first = taken.setdefault(address, spec.name)
            if first != spec.name:  # (the store is keyed by address: one cluster per address; rev-c33-F3)
                shared.add((address, first, spec.name))
                continue
            eps.append(Endpoint(address=address, pool=POOL, labels={CLUSTER_LABEL: spec.name}))
        for address, first, later in sorted(shared - self._shared):  # (once while it lasts)
            log.warning("clusters %s and %s: their gateways both reach %s; only %s is picked (one address, "
                        "one cluster)", first, later, address, first)  # fmt: skip
        self._shared = shared
        self.store.sync(eps)
        self._probed_at = {k: v for k, v in self._probed_at.items() if k in self.states}
        self._suspect = {k: v for k, v in self._suspect.items() if k in self.states}
        for attr, value in (("ttl_s", cfg.ttl_s), ("local", cfg.local)):
            if hasattr(self.policy, attr):
                setattr(self.policy, attr, value)

    def state_list(self) -> list[ClusterState]:
        return list(self.states.values())

    def ready(self) -> bool:
        """Whether ``pick`` would name a cluster, without ordering one (readiness; as the global gateway's
        ``GlobalRouter.ready``): the kvgate policy names every cluster but one whose fresh aggregate shows
        no ready endpoint, the others every cluster with a gateway."""
        routable = {ep.labels.get(CLUSTER_LABEL) for ep in self.store.all()}  # (a name not resolved: none)
        states = [c for c in self.state_list() if c.name in routable]  # (Parent mode: each has a gateway)
        if isinstance(self.policy, KvgatePolicy):
            now = self.clock()
            return any(not self.policy.dead(c, now) for c in states)
        return bool(states)

    def _state(self, ep: Endpoint) -> ClusterState | None:
        return self.states.get(ep.labels.get(CLUSTER_LABEL, ""))

    def pick(self, req: InferenceRequest, explain: bool = False) -> PickResult:
        creq = ClusterRequest(req.model, prompt_key(req.prompt_text, req.token_ids))
        by_name = {ep.labels.get(CLUSTER_LABEL): ep for ep in self.store.all()}
        # Only routable clusters ordered: a round-robin turn (or a sample) of a cluster with no address yet
        # would go to its successor (rev-c33-F1).
        order = self.policy.order([c for c in self.state_list() if c.name in by_name], creq, self.clock())
        chosen = [by_name[c.name] for c in order]
        if req.subset_soft and req.subset:
            # A Responses follow-up or lookup (``Session._pin``): the cluster whose gateway answered the
            # response it names first, whatever the policy's order (as ``kvgate serve --clusters``'s home),
            # then the others as fallbacks.
            home = [ep for ep in self.store.all() if ep.address in req.subset]
            chosen = home[:1] + [ep for ep in chosen if ep.address not in req.subset]
        # One address unless fallbacks are named: Envoy walks no list it was not given, nor does the cut walk.
        if not self.fallbacks:
            chosen = chosen[:1]
        self._loads.pop(id(req), None)  # (a reused id never finds an earlier request's loads)
        if not chosen:
            raise NoCapacityError("no cluster can take the request (none ready)")
        if len(self._loads) >= MAX_WAITS:  # picked, never dispatched: the oldest is forgotten
            self._loads.pop(next(iter(self._loads)))
        self._loads[id(req)] = creq
        explanation: dict[str, Any] = {}
        if explain:
            explanation = {"policy": self.policy.name, "order": [c.name for c in order]}
        return PickResult(chosen, POOL, explanation)

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None:
        loads = self._loads.pop(id(req), None)
        st = self._state(endpoint)
        if st is None:
            return
        note = loads.note(st.name) if loads is not None else None
        if len(self._waits) >= MAX_WAITS:  # the oldest stops waiting (as if finished unseen)
            name, token = self._waits.pop(next(iter(self._waits)))
            if name in self.states:
                self.states[name].answered_without_ttft(token)
        # A non-streamed request's token too: its end (``finished``) says whether the cluster answered.
        # (usage: the end's reported cached tokens classify a streamed answer as a hit or a miss.)
        token = st.dispatched(self.clock() if req.stream else None, note=note, usage=req.stream)
        self._waits[id(req)] = (st.name, token)

    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None:
        # (``learn`` is moot here: only streamed requests wait for a first token, see on_dispatched.)
        wait = self._waits.get(id(req))
        st = self._state(endpoint)
        if wait is None or st is None or st.name != wait[0]:
            return
        since = st.waiting.get(wait[1])
        if since is not None:  # (None: its first token was seen already)
            now = self.clock()
            st.observe_ttft(now - since, now, wait[1])

    def on_answered(self, req: InferenceRequest, endpoint: Endpoint, status: int) -> None:
        """The cluster's gateway answered ``status`` (the ext_proc session's response headers): its end
        is classified by it (``on_finished``)."""
        if len(self._status) >= MAX_WAITS:  # (a lost finish cannot grow it)
            self._status.pop(next(iter(self._status)))
        self._status[id(req)] = status

    def on_abandoned(self, req: InferenceRequest, endpoint: Endpoint) -> None:
        """The client left before the cluster's response headers (the session's stream was cancelled): its
        end (``on_finished``) neither fails nor clears the cluster, as the global router's ``given_up``.
        But Envoy may have failed to connect to this cluster's gateway and moved on to a fallback whose
        headers never came (the session learns the served address only from them): so the hub checks
        itself whether the gateway takes a connection (``_probe``) and backs the cluster off if not."""
        self.on_answered(req, endpoint, _ABANDONED)
        st = self._state(endpoint)
        if st is None or st.name in self._probes:
            return
        now = self.clock()
        at = self._probed_at.get(st.name)
        if at is not None and now - at < PROBE_EVERY_S:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no loop: a synchronous caller; nothing to probe with)
            return
        self._probed_at[st.name] = now
        self._probes[st.name] = loop.create_task(self._probe(st, endpoint.address, now))

    async def _probe(self, st: ClusterState, address: str, started: float) -> None:
        """``started``: when the probe started (``_probed_at``), the time its failure is recorded at (review
        s16-hard I1: the spacing PROBE_EVERY_S and the age SUSPECT_FOR_S both measure probe starts)."""
        try:
            ok = await self.probe(address)
        finally:
            self._probes.pop(st.name, None)
        if ok is None:  # (review s16-fixes-b H1: no lookup of its own, no verdict: neither way)
            log.debug("cluster %s: its gateway %s was not probed (its name's lookup could not start: "
                      "MAX_LOOKUPS waited on or MAX_LOOKUP_THREADS run; or another probe waited on the same "
                      "running lookup in vain already); no failure recorded or cleared",
                      st.name, address)  # fmt: skip
            return
        if ok:
            self._suspect.pop(st.name, None)
            return
        if self.states.get(st.name) is not st:  # (not that cluster any more: removed by a reload)
            return
        last = self._suspect.get(st.name)
        self._suspect[st.name] = started  # (renewed: a suspicion lasts SUSPECT_FOR_S from the last failure)
        if (
            last is None or started - last > SUSPECT_FOR_S
        ):  # a first failure: corroborated by the next, or not
            log.info("cluster %s: its gateway %s refused or timed out the hub's connection after a client "
                     "left before its answer (not backed off: once more within %gs, with no answer "
                     "between, and another cluster up, backs it off)",
                     st.name, address, SUSPECT_FOR_S)  # fmt: skip
            return
        now = self.clock()
        if not any(c is not st and c.available(now) and c.healthy is not False for c in self.states.values()):
            return  # (no other cluster to send to: backing the last one off would only answer 503)
        log.info("cluster %s: its gateway %s refused or timed out the hub's connection again after a client "
                 "left before its answer, none answered since: backed off", st.name, address)  # fmt: skip
        st.failed(now, "its gateway refused or timed out the hub's connection, twice")

    def on_cut(
        self,
        req: InferenceRequest,
        endpoint: Endpoint,
        headed: bool,
        steady: bool,
        bound_s: float,
        fallbacks: Sequence[Endpoint] = (),
    ) -> str:
        """The request was cut at ``limits.requestTimeoutSeconds`` (the ext_proc stream's reads,
        ``Session.cut``); the 504's message. As ``kvgate serve --clusters`` charges a cluster: before its
        response head, always (the hub picks the moment the body has arrived, so the cluster held the whole
        bound: it owned the deadline), after it only if the answer was not ``steady``. Its end
        (``on_finished``) then neither fails nor clears it again. A cut before the head is the evidence for
        a probe of the gateway (``GET /healthz`` within ``probe_timeout_s``, review s20-mc L4): no answer,
        the cluster is hung (marked until an aggregate is fetched from it again), as the global gateway's
        probe finds one. Before the head the served address is not known yet: with ``fallbacks`` (the rest
        of the destination list) Envoy may have failed to connect to ``endpoint`` and gone on to the next
        (review s21-mc L3); ``endpoint`` is charged either way (it hung, or it refused Envoy), and when the
        probe gets no connection to it the next address is taken as the one that held the bound
        (``_live``)."""
        self.on_answered(req, endpoint, _CUT)
        st = self._state(endpoint)
        name = endpoint.labels.get(CLUSTER_LABEL, endpoint.address)
        what = "the answer was cut at the bound" if headed else "no response head by then"
        message = f"no answer within limits.{REQUEST_TIMEOUT_KEY} ({bound_s:g}s): cluster {name}: {what}"
        if st is None:
            return message
        if not headed or not steady:
            st.failed(self.clock(), f"cut at limits.{REQUEST_TIMEOUT_KEY}: {what}")
        if not headed and st.name not in self._live_probes:
            with contextlib.suppress(RuntimeError):  # (no loop: nothing to probe with)
                task = asyncio.get_running_loop().create_task(self._live(st, endpoint.address, fallbacks))
                self._live_probes[st.name] = task
        return message

    async def _live(self, st: ClusterState, address: str, fallbacks: Sequence[Endpoint] = ()) -> None:
        """The gateway probed after a cut (``on_cut``): any answer to ``GET /healthz`` within
        ``probe_timeout_s`` means live; none, hung (with an aggregate fetched before: left out until the
        next; it was charged at the cut). No connection to it at all (refused, no route, no name; or
        blackholed: its SYNs dropped, so the connect times out, review s21-fixes-b F3), with
        ``fallbacks``: Envoy most likely could not connect either and went on to the next address (a
        blackholed one after its connect_timeout), which then held the rest of the bound: that cluster is
        charged and probed the same way (as far as the EPP's network shows Envoy's: a refusal only the EPP
        sees charges a fallback Envoy never tried, once). A probe that timed out is told apart by a connect
        of its own (``connects``: judged by the socket, not by which of the timer and the handshake the
        loop ran first): none within ``probe_timeout_s`` is no connection; one is a gateway that took the
        connection and did not answer (hung)."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.cfg.probe_timeout_s)
        me = asyncio.current_task()
        try:
            while True:
                refused = False
                try:
                    async with (
                        aiohttp.ClientSession(timeout=timeout) as http,
                        http.get(f"http://{address}/healthz"),
                    ):
                        return  # (its head came: the process answers)
                except aiohttp.ClientConnectorError:
                    refused = True
                except TimeoutError:  # (aiohttp's ServerTimeoutError too): its connect, or its answer?
                    refused = await connects(address, self.cfg.probe_timeout_s) is False
                except (aiohttp.ClientError, OSError, ValueError):
                    pass
                if self.states.get(st.name) is st:
                    if st.fetched_at is not None:
                        st.hung_at = st.fetched_at
                    how = "took no connection" if refused else "answered no probe"
                    log.info("cluster %s: cut at limits.%s before its head, and its gateway %s %s within "
                             "%gs: hung", st.name, REQUEST_TIMEOUT_KEY, address, how,
                             self.cfg.probe_timeout_s)  # fmt: skip
                    # (charged at the cut, before this was known: the streak's WARNING now, rev-e34-F3)
                    st.found_hung(
                        self.clock(),
                        f"cut at limits.{REQUEST_TIMEOUT_KEY} before its head, and its gateway {how}",
                    )
                nxt = self._state(fallbacks[0]) if refused and fallbacks else None
                if nxt is None:
                    return
                nxt.failed(self.clock(), "held the cut request (the address before it took no connection)")
                log.info("cluster %s: taken as the one Envoy waited on until the cut (the address before it "
                         "took no connection): charged", nxt.name)  # fmt: skip
                # One probe per cluster at a time, the walk's too: it moves to the cluster it probes now
                # (a cut of that one meanwhile starts none), and ends where a probe is in flight already.
                if nxt.name in self._live_probes:
                    return
                self._hold(st.name, me, nxt.name)
                st, address, fallbacks = nxt, fallbacks[0].address, fallbacks[1:]
        finally:
            self._hold(st.name, me)

    def _hold(self, name: str, task: asyncio.Task[Any] | None, to: str | None = None) -> None:
        """``task``'s entry in ``_live_probes`` under ``name`` dropped (if it is ``task``'s: once moved on,
        a cut of ``name`` may have started its own), and put under ``to``."""
        if self._live_probes.get(name) is task:
            del self._live_probes[name]
        if to is not None and task is not None:
            self._live_probes[to] = task

    async def close(self) -> None:
        """Ends the connect probes in flight (``on_abandoned``) and the probes after a cut (``on_cut``)."""
        for task in list(self._probes.values()):
            await cancel_and_wait(task, "a cluster gateway's connect probe", log)
        self._probes.clear()
        for live in list(self._live_probes.values()):
            await cancel_and_wait(live, "a cluster gateway's probe after a cut", log)
        self._live_probes.clear()

    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None:
        self._loads.pop(id(req), None)  # (picked but closed before its dispatch)
        status = self._status.pop(id(req), 0)
        wait = self._waits.pop(id(req), None)
        st = self._state(endpoint)
        if st is not None:
            # With the time, as the global gateway does: a streamed request's first token to its end is
            # the cluster's decode time (decode_s), which the kvgate policy's home weights read.
            # (A failed one without: it teaches no decode time, and its prefix is not sent there.)
            token = wait[1] if wait is not None and wait[0] == st.name else 0
            cached = usage.cached_share if ok and usage is not None else None
            st.finished(token, self.clock() if ok else None, cached=cached)
            # As the global gateway's router: a cluster fails (and backs off) when it did not answer
            # (unreachable: Envoy went on to the next address; the EPP's idle sweeper ended the stream
            # before response headers came) or answered 5xx / 429; any other answer is the client's (a
            # 400, 404, 413 refusing the request, a 2xx whose client then left or that was cut): the
            # cluster took the request, no back-off. A client that left before any answer (its stream
            # cancelled, ``on_abandoned``) tells nothing of the cluster: neither (the router's cancel).
            if status in (_ABANDONED, _CUT):  # (a cut: charged by ``on_cut``, or not)
                return
            if ok or (status and status < 500 and status != 429):
                st.succeeded()
                self._suspect.pop(st.name, None)  # (Envoy reached it: a failed probe was the EPP's view)
            else:
                st.failed(self.clock(), f"HTTP {status}" if status else "no answer (unreachable, or no head)")


async def connects(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool | None:
    """Whether a TCP connection to ``address`` (``host:port``, an IPv6 host in brackets) opens within
    ``timeout_s`` (closed at once; nothing is sent); None when it could not tell: a host name whose lookup
    told nothing (``_NotTried``: none started, MAX_LOOKUPS waited on or MAX_LOOKUP_THREADS run, or its thread
    could not start; or the probe waited in vain on a running lookup of the name that another probe had
    already waited on in vain), which is no observation of the gateway (review s16-fixes-b H1 H3: counted as a
    failure, the first probe's one lost DNS answer was counted twice and backed a listening cluster off). A
    name answered within ``LOOKUP_TTL_S`` is not looked up again (``_Lookups``). A host name is resolved
    within the same time, and its addresses (at most MAX_TARGETS) are all tried at once with what is left
    (review s16-hard L1: one after another, a refusal of the first delivered after a loop stall left the next
    none of its own, and a first address that never answers left the others none at all). A port outside
    1-65535 is down before any lookup (review s16-hard L2: glibc cuts a host name's port to 16 bits).

    No step is judged by the event loop's timer alone (review s15-labels L1, s15-fixes-a L2): a loop
    stalled past ``timeout_s`` runs the timeout in the same turn as the step's completion, and the
    timeout won, judging a listening gateway down. So when the time is up, every socket itself says
    whether its connect completed, and a host name's lookup (``_lookup``) counts as done in time when it
    finished, as its own thread timed it, within ``timeout_s``; the connects then get what is left."""
    host, _, port_s = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        return False
    if not host or not 0 < port <= 65535:  # (before any lookup: getaddrinfo wraps a port past 65535)
        return False
    loop = asyncio.get_running_loop()
    targets: list[tuple[socket.AddressFamily, Any]]
    try:  # (an address needs no resolver: no thread turn that a stall could outlast)
        ip = ipaddress.ip_address(host)
        targets = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
        left = timeout_s
    except ValueError:
        try:  # (the name yarl sends for the fetcher, not getaddrinfo's IDNA 2003: s17-fixes-a L1)
            targets, took = await _lookup(loop, idna_host(host), port, timeout_s, probe=True)
        except _NotTried:
            return None
        except (TimeoutError, OSError, ValueError):  # (gaierror; UnicodeError: a name IDNA refuses)
            return False
        left = timeout_s - took
    return await _connect_any(loop, targets[:MAX_TARGETS], left)


async def _connect_any(
    loop: asyncio.AbstractEventLoop, targets: list[tuple[socket.AddressFamily, Any]], left: float
) -> bool:
    """Whether a connect to one of ``targets``, all started at once, completes within ``left`` seconds of
    its own: True as soon as one does. Each connect's time is counted from when it was issued, not from
    when the loop's timer was set: after a stall past ``left`` one issued before the stall is judged by
    its socket (the kernel's view: a handshake done during the stall counts), one issued only after it
    (the loop ran its start late) gets its ``left``. Every connect ended and every socket closed before
    it returns."""
    socks: list[socket.socket] = []
    issued: dict[asyncio.Task[None], float] = {}  # connect -> when it was issued (time.monotonic)
    tasks: list[asyncio.Task[None]] = []

    async def attempt(sock: socket.socket, addr: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        issued[task] = time.monotonic()
        await loop.sock_connect(sock, addr)

    try:
        for family, addr in targets:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:  # (a family this host lacks: IPv6 on an IPv4-only pod)
                continue
            socks.append(sock)
            sock.setblocking(False)
            tasks.append(loop.create_task(attempt(sock, addr)))
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            now = time.monotonic()
            # (a connect not issued yet has all of ``left``; one issued has what is left of it)
            wait_s = max(left - (now - issued[t]) if t in issued else left for t in pending)
            if wait_s <= 0:  # every connect had its time: the sockets say (``_connected``)
                return any(_connected(s) for s in socks)
            done, pending = await asyncio.wait(pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            if any(not t.cancelled() and t.exception() is None for t in done):
                return True
        return False
    finally:
        try:
            await cancel_all_and_wait([t for t in tasks if not t.done()], "a gateway probe's connect", log)
            for t in tasks:
                if t.done() and not t.cancelled():
                    t.exception()  # (retrieved: a refusal is an answer, not an error to log)
        finally:  # (review s16-fixes-b H2: a second cancel during the wait raises; the sockets close still)
            for s in socks:
                s.close()


class _NotTried(Exception):
    """A host name's lookup that told the probe nothing: none started (MAX_LOOKUPS waited on,
    MAX_LOOKUP_THREADS run, or its thread could not start), or the probe waited in vain on a lookup that
    another probe had already waited on in vain (that lookup's one slow answer is counted once): the probe
    observed nothing (``connects`` answers None)."""


_Targets = list[tuple[socket.AddressFamily, Any]]
_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _Lookup:
    """One host name's lookup thread (``getaddrinfo`` with no port: its answer serves every port) and the
    waits on it: its starter's and those that joined it (each on its own loop)."""

    __slots__ = ("ended", "error", "given_up", "host", "started", "targets", "timed_out", "waiters")

    def __init__(self, host: str) -> None:
        self.host = host
        self.started: float | None = None  # (time.monotonic, set by its thread)
        self.ended: float | None = None  # its thread is out of getaddrinfo
        self.targets: _Targets = []
        self.error: BaseException | None = None
        self.waiters: list[_Waiter] = []
        self.timed_out = False  # a probe's wait on it timed out: its slowness is counted (once)
        self.given_up = False  # a wait on it ended before its answer: it hangs (no longer in MAX_LOOKUPS)


class _Lookups:
    """The host-name lookups of the hub probe and the aggregate fetcher (review s16-hard M1, s17-kvhub M1):
    a daemon thread each, one per name at a time, bounded, and their answers kept a while.

    - A lookup of a name whose lookup is running joins it (its answer, with the joiner's own time to wait)
      and starts none: a name server that does not answer costs one thread per name for its whole time-out
      (tens of seconds). At most MAX_LOOKUPS lookups that no wait has given up on yet run at once, and at
      most MAX_LOOKUP_THREADS in all (past either a new name is not looked up: ``_NotTried``; a name
      answered within ``ttl_s`` still is, from what was kept). A lookup that outlived a wait on it (a name
      server that does not answer that name) runs on for its answer, to be kept, but no longer counts
      toward MAX_LOOKUPS, also when later waits join it (k8s18): before, more than MAX_LOOKUPS hung names
      refused every other name not answered within ``ttl_s``, for as long as they hung; now a hung name
      costs only its own thread (others wait at most one wait's time-out behind MAX_LOOKUPS new hung ones),
      and the threads stay bounded by MAX_LOOKUP_THREADS (one per name at most: the names the
      configuration holds).
    - An answer is kept for ``ttl_s`` (10 s, aiohttp's ``ttl_dns_cache``) when its lookup ends, also when
      every wait on it had given up: a name server that answers, but slower than a fetch's or a probe's
      time-out, fails one round, and the next ones use its answer (before, every round's lookup was given
      up and its answer dropped, and the rounds between refused: such a cluster was never fetched again).
      Failures are not kept.
    - A probe whose wait on a lookup times out counts it as slow (``TimeoutError``: a failure) only when no
      probe's wait on that lookup timed out before; otherwise it is inconclusive (``_NotTried``, review
      s16-fixes-b H1: it would count the lookup's one slow answer a second time). The fetcher's waits do
      not count: its given-up lookup leaves the probe its own verdict, and the probe's leaves the
      fetcher its answer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl_s: float = LOOKUP_TTL_S) -> None:
        self.lock = threading.Lock()
        self.clock = clock  # (the kept answers' age only; the lookups' own times are their threads')
        self.ttl_s = ttl_s
        self.inflight: dict[str, _Lookup] = {}  # host -> its running lookup
        self.kept: dict[str, tuple[float, _Targets]] = {}  # host -> (kept until, its answer); oldest first

    @property
    def running(self) -> int:
        return len(self.inflight)

    def forget(self) -> None:
        """Drops the kept answers (tests)."""
        with self.lock:
            self.kept.clear()

    def _kept(self, host: str) -> _Targets | None:
        hit = self.kept.get(host)
        if hit is None:
            return None
        if self.clock() >= hit[0]:
            del self.kept[host]
            return None
        return hit[1]

    def take(self, host: str, waiter: _Waiter) -> tuple[_Targets | None, _Lookup | None]:
        """(kept answer, None); or (None, the lookup now waited on): the name's running one, else a new one
        on a thread of its own; ``_NotTried`` when none could start."""
        with self.lock:
            targets = self._kept(host)
            if targets is not None:
                return targets, None
            lk = self.inflight.get(host)
            if lk is None:
                fresh = sum(1 for other in self.inflight.values() if not other.given_up)
                if fresh >= MAX_LOOKUPS or len(self.inflight) >= MAX_LOOKUP_THREADS:
                    raise _NotTried
                lk = _Lookup(host)
                # (started under the lock: its end waits for it, and nobody joins one that did not start)
                try:
                    threading.Thread(target=self._resolve, args=(lk,), name=f"kvgate-lookup:{host}",
                                     daemon=True).start()  # fmt: skip
                except RuntimeError as e:  # ("can't start new thread": a pids limit; review s16-fixes-b H3)
                    log.info("the lookup of %s could not start its thread (%s): not looked up", host, e)
                    raise _NotTried from e
                self.inflight[host] = lk
            lk.waiters.append(waiter)
            return None, lk

    def _resolve(self, lk: _Lookup) -> None:
        lk.started = time.monotonic()
        targets: _Targets = []
        error: BaseException | None = None
        try:
            infos = socket.getaddrinfo(lk.host, None, type=socket.SOCK_STREAM)
            targets = [(family, addr) for family, _t, _p, _c, addr in infos]
        except Exception as e:  # (gaierror, or whatever the C library raised: the waiters' to judge)
            error = e
        with self.lock:
            lk.ended, lk.targets, lk.error = time.monotonic(), targets, error
            if self.inflight.get(lk.host) is lk:
                del self.inflight[lk.host]
            if error is None and targets:  # (kept even when nobody waits any more: review s17-kvhub M1)
                self.kept.pop(lk.host, None)
                if len(self.kept) >= MAX_KEPT:
                    self.kept.pop(next(iter(self.kept)))
                self.kept[lk.host] = (self.clock() + self.ttl_s, targets)
            waiters, lk.waiters = lk.waiters, []
        for loop, answer in waiters:
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, answer)

    def leave(self, lk: _Lookup, waiter: _Waiter) -> bool:
        """A wait on ``lk`` ends before its answer: whether the lookup was still running (False: it ended
        meanwhile, its answer is there)."""
        with self.lock:
            if lk.ended is not None:
                return False
            lk.given_up = True
            with contextlib.suppress(ValueError):
                lk.waiters.remove(waiter)
            return True

    def vain(self, lk: _Lookup, probe: bool) -> None:
        """A wait on ``lk`` that timed out (its answer not there in time, or there after more than the
        wait's time: a loop stall): for a ``probe``, ``_NotTried`` when another probe's wait on it had
        timed out already (its one slow answer is counted once), else it is counted now."""
        if not probe:
            return
        with self.lock:
            counted, lk.timed_out = lk.timed_out, True
        if counted:
            raise _NotTried


def _settle(answer: asyncio.Future[None]) -> None:
    if not answer.done():  # (not when the wait was given up)
        answer.set_result(None)


_LOOKUPS = _Lookups()


def _at_port(targets: _Targets, port: int) -> _Targets:
    return [(family, (addr[0], port, *addr[2:])) for family, addr in targets]


async def _lookup(
    loop: asyncio.AbstractEventLoop, host: str, port: int, timeout_s: float, *, probe: bool = False
) -> tuple[_Targets, float]:
    """``host``'s stream addresses at ``port`` (``_LOOKUPS``: a kept answer, or the name's running lookup
    joined, or ``getaddrinfo`` on a daemon thread of its own, as ``kvsubscriber.lookup_ipv4``: not the
    loop's default executor, whose workers a given-up lookup would hold, queueing every other lookup of
    the process behind it, and which ``asyncio.run``'s end waits for) and how long this wait took for it
    (0 for a kept answer; a joined lookup's time from when it was joined), as the lookup's thread timed
    it. TimeoutError when it did not come within ``timeout_s``: not there when the loop's timeout fires,
    or there (the loop stalled meanwhile, so the timeout came late) but after more than ``timeout_s`` of
    this wait's own; ``_NotTried`` when the lookup told nothing (``_Lookups``: none started; for a
    ``probe``, a lookup another probe had already waited on in vain); its error (``socket.gaierror``)
    otherwise."""
    joined = time.monotonic()
    answer: asyncio.Future[None] = loop.create_future()
    waiter: _Waiter = (loop, answer)
    kept, lk = _LOOKUPS.take(host, waiter)
    if lk is None:
        assert kept is not None
        return _at_port(kept, port), 0.0
    try:
        async with asyncio.timeout(timeout_s):
            await answer
    except TimeoutError:
        if _LOOKUPS.leave(lk, waiter):  # (still looking up when the time came)
            _LOOKUPS.vain(lk, probe)
            raise
    except BaseException:  # (the wait cancelled: the hub's stop, a fetch's end)
        _LOOKUPS.leave(lk, waiter)
        raise
    assert lk.ended is not None and lk.started is not None
    took = lk.ended - max(lk.started, joined)
    if took >= timeout_s:
        _LOOKUPS.vain(lk, probe)
        raise TimeoutError
    if lk.error is not None:
        raise lk.error
    return _at_port(lk.targets, port), took


def _connected(sock: socket.socket) -> bool:
    """Whether a non-blocking socket's connect has completed (the kernel's view, not the loop's)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


class HubFeed:
    """The hub EPP's data source: aggregates and EPP health of every cluster, clusters-file reloads, and
    the clusters of the InferencePoolImport its ``kubernetes:`` section follows (``ClusterSource``, as
    ``kvgate serve --clusters`` reads them)."""

    def __init__(
        self,
        director: ClusterDirector,
        clusters_file: Any = None,
        *,
        staleness: Any = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        drain_from_file: bool = True,
        registry: CollectorRegistry | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``drain_from_file``: the stop's drain is the clusters file's ``limits.drainTimeoutSeconds`` as
        last reloaded (False: ``--drain-timeout`` was given), so a reload that changes it says so, as
        ``kvgate serve --clusters`` does. ``staleness``: the members' InferencePool watches'
        ``StalenessPolicy`` (None: 120 s). ``sleep``: the sleep of the director's clock (one time, k8s17:
        given exactly when that clock is not the loop's, ``time.monotonic``; fixk8s17, review s17-k8s F2: a
        ``sleep`` with a director on the loop's clock is refused too), for ``ClusterSource`` (the writers'
        election, the members' watches), the aggregate fetcher's rounds and the clusters file's checks.
        ``registry``: where the clusters file's reloads are counted (the EPP's metrics registry), under
        ``kvgate serve --clusters``' names for the same file, ``kvgate_multicluster_config_*`` (None: not
        counted). ``wall``: the clock of the last reload's timestamp (injected, as ``kvgate serve --clusters``
        injects its own)."""
        from kvgate.multicluster.fetcher import Fetcher
        from kvgate.multicluster.gateway_names import GatewayNames
        from kvgate.multicluster.source import ClusterSource

        if (sleep is None) != (director.clock is time.monotonic):
            if sleep is None:
                raise ValueError("a director with its own clock needs sleep=: give both (one time) or "
                                 "neither")  # fmt: skip
            raise ValueError("sleep= with a director on the loop's clock (time.monotonic): give the director "
                             "its clock= too (one time) or neither")  # fmt: skip
        self.sleep = sleep or asyncio.sleep
        cfg = director.cfg
        self.director = director
        # Host-name gateways resolved to addresses (named as written before, which Envoy cannot route to).
        self.names = GatewayNames(lambda: director.apply(director.cfg), sleep=self.sleep)
        director.names = self.names
        director.apply(cfg)  # (a name leaves its cluster out until it resolves: ``start``'s first round)
        self._names_task: asyncio.Task[None] | None = None
        self.clusters_file = clusters_file
        # (parent mode: a cluster's gateway only)
        self.source = ClusterSource(cfg, director.apply, parent_mode_only=True, staleness=staleness,
                                    clock=director.clock, sleep=self.sleep)  # fmt: skip
        self.reload_metrics: ReloadMetrics | None = None
        if clusters_file is not None:
            clusters_file.on_change = self.reload
            if registry is not None:
                self.reload_metrics = ReloadMetrics(registry, "kvgate_multicluster", "clusters file", wall)
                clusters_file.on_result = self.reload_metrics.result
        self.fetcher = Fetcher(director.state_list, interval_s=cfg.refresh_s, tls=cfg.tls,
                               clock=director.clock, sleep=self.sleep)  # fmt: skip
        self.fetcher.on_refused = lambda cluster: AGGREGATES_REFUSED.labels(cluster).inc()
        self._task: Any = None
        self.pool = POOL  # (before the first cluster is known, the store has no pool to name)
        self._warned: str | None = None
        self._mode: bool | None = None  # the destination's mode last said (``_warn_bound``)
        self._drain_from_file = drain_from_file
        self._warn_bound(cfg)

    def _warn_bound(self, cfg: ClustersConfig) -> None:
        """``bound_warning`` logged at start and at a reload that changes it (not at every reload); the
        destination's mode (one address, or fallbacks) said the same way."""
        why = bound_warning(cfg, self.director.fallbacks)
        if why is not None and why != self._warned:
            log.warning("clusters file: %s", why)
        self._warned = why
        mode = self.director.fallbacks
        if mode != self._mode:
            if mode:
                log.info("hub EPP: x-gateway-destination-endpoint names the chosen cluster's gateway, then "
                         "the others' as fallbacks (destination_fallbacks): Envoy's Override Host policy "
                         "walks that list; an ORIGINAL_DST cluster (deploy/envoy.yaml) answers a list 503 "
                         "(docs/epp.md, 'The Envoy side')")  # fmt: skip
            else:
                log.info("hub EPP: x-gateway-destination-endpoint names one gateway address, the chosen "
                         "cluster's (as an ORIGINAL_DST cluster takes it; destination_fallbacks: true names "
                         "the others after it, for Envoy's Override Host policy)")  # fmt: skip
        self._mode = mode

    def reload(self, cfg: ClustersConfig) -> None:
        """A clusters-file reload: the clusters (or the kubernetes section), TTL, locality, and the
        aggregate fetcher's TLS options and interval, live; the drain (read at the stop) too."""
        before = self.source.file_cfg
        self.source.reload(cfg)
        if before.drain_timeout_s != cfg.drain_timeout_s and self._drain_from_file:  # (serve's line: fixe28)
            log.info("clusters file: limits applied: drainTimeoutSeconds %g -> %g",
                     before.drain_timeout_s, cfg.drain_timeout_s)  # fmt: skip
        self.fetcher.apply(cfg.tls, cfg.refresh_s)
        self._warn_bound(cfg)

    async def start(self) -> None:
        import asyncio

        await self.fetcher.start()
        try:
            await self.source.start()
        except BaseException:  # the kubernetes section cannot be loaded: the EPP does not start
            await self.fetcher.stop()
            raise
        # The gateways' names looked up before the first pick (bounded: RESOLVE_TIMEOUT_S), then kept so.
        await self.names.refresh()
        self._names_task = asyncio.create_task(self.names.run())
        if self.clusters_file is not None:
            self._task = asyncio.create_task(self._reload())

    def reload_now(self) -> None:
        """SIGHUP: the clusters file read now, whatever its modification time, not at the next poll."""
        if self.clusters_file is not None:
            self.clusters_file.reload_now(self.director.clock())
            self.source.poll()

    async def _reload(self) -> None:
        while True:
            await self.sleep(self.clusters_file.check_every_s)
            self.clusters_file.maybe_reload(self.director.clock())
            self.source.poll()

    async def stop(self) -> None:
        """(To its end also when cancelled meanwhile, the cancellation raised after: ``stop_to_the_end``.)"""
        await stop_to_the_end(self._stop(), "the hub feed's stop", log)

    async def _stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, "the hub's clusters-file reload loop", log)
        if self._names_task is not None:
            await cancel_and_wait(self._names_task, "the hub's gateway-name lookups", log)
        await self.source.stop()
        await self.fetcher.stop()
        await self.director.close()
