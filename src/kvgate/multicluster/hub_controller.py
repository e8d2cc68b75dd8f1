"""``kvgate hub-controller``: the InferencePoolImport hub controller as a process of its own.

``kvgate serve --clusters`` runs the controller inside the global gateway (``kubernetes.controller``, the
default); with several gateway replicas that is several writers of the same status. This command runs it
alone, from the same clusters file's ``kubernetes:`` section (the hub API server, the members, the import
the gateways follow and their ``parent``; watched as the gateways watch it: a changed section restarts
the controller in place, ``FileFollower``), and with ``--ha-enable-leader-election`` only the holder of a
``coordination.k8s.io/v1`` Lease in the hub runs it (``kvgate.k8s.lease``, client-go's algorithm). The
gateways then set ``kubernetes.controller: false``: they read the members' pools to route, and write
nothing.

What it writes is ``kvgate.multicluster.imports.ImportController``'s: the imports and their status, the
members' ``Exported`` conditions, and the followed import's ``parents[]`` entry for ``kubernetes.parent``.
A leader that loses its Lease (or stops) leaves that parent entry in place: the gateways still route the
import. Each term starts by reading back the imports that carry the controller's entry in the hub (and
reads them again every ``--resync-period``), so the next leader deletes the ones nothing exports any more,
those the previous leader created included, and rewrites what another writer changed.

Health on ``--port``: ``/healthz`` (the process answers; 503 once the controller's loop ended on an
error nobody foresaw, so the liveness probe restarts it and the Lease goes to a standby) and
``/readyz``: 503 with the reason while the controller this replica runs cannot see a member (an RBAC
error, not synced yet) or its writes to the hub fail; a standby is ready (it takes no traffic, and a
Deployment's rollout must not wait for it to lead).
``/v1/status``: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from kvgate.aio import serve_on_sighup, stop_to_the_end
from kvgate.entry import ArgumentParser, log_level, port_number, sighup_ignored
from kvgate.httpfront.server import (
    FrontServer,
    Handler,
    Request,
    Response,
    StreamResponse,
    get_only,
    json_error,
)
from kvgate.k8s.client import KubeClient
from kvgate.k8s.lease import LeaderElector, check_one_time
from kvgate.k8s.runtime import default_identity
from kvgate.k8s.stalepolicy import StalenessFlagError, StalenessPolicy, hub_policy
from kvgate.k8s.tasks import RECANCELS, STUCK_S, cancel_and_wait
from kvgate.multicluster.clusters import DEFAULT_LEASE, ClustersError, ClustersFile, KubeImports
from kvgate.multicluster.imports import WATCHES_STOP_S, ImportController, Member
from kvgate.multicluster.source import RETRY_S
from kvgate.stderrlog import off_loop_stderr, say

log = logging.getLogger("kvgate.multicluster.hub_controller")

RESYNC_S = 30.0  # the hub's imports read back and reconciled this often
# How long the leadership follower may take to end once cancelled: while it steps down it is in
# ``ImportController.stop``, which under a cancel still waits for the members' watches, through further
# cancels, up to ``WATCHES_STOP_S`` (a cancel ends its wait for the reconcile loop at once), plus
# ``STUCK_S`` of slack. ``HubController.stop`` judges it stuck (re-cancels, then abandons it, logged)
# only after that: at most ``FOLLOWER_STOP_S + RECANCELS x STUCK_S`` (35 s), 20 s when it steps down.
FOLLOWER_STOP_S = WATCHES_STOP_S + STUCK_S
# What ``kvgate hub-controller``'s stop may wait on tasks that do not end when cancelled before it releases
# the Lease: the clusters-file check (``cancel_and_wait``, 15 s) then the follower (35 s). The chart's
# ``terminationGracePeriodSeconds`` covers it (60 s), else the kubelet's SIGKILL leaves the Lease held.
STOP_BOUND_S = (RECANCELS + 1) * STUCK_S + FOLLOWER_STOP_S + RECANCELS * STUCK_S


@dataclass(frozen=True, slots=True)
class Election:
    """Leader election among controller replicas (None: this one always runs the controller)."""

    # None: the clusters file's ``kubernetes.lease`` (default: the install's, ``clusters.default_lease``,
    # in the followed import's namespace), the Lease gateways running the controller compete for too.
    name: str | None = None
    namespace: str | None = None
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    identity: str | None = None


class HubController:
    """The controller, run while this replica leads (always, without an election)."""

    def __init__(
        self,
        kube: KubeImports,
        election: Election | None = None,
        *,
        resync_s: float = RESYNC_S,
        staleness: StalenessPolicy | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``staleness``: the members' InferencePool watches' (``--kube-stale-after``; default 120 s).
        ``clock`` and ``sleep``: one time (both or neither: ``check_one_time``; default the loop's) for the
        leader election and the members' watches (their ages, their liveness probes)."""
        check_one_time(clock, sleep)
        self.clock, self.sleep = clock or time.monotonic, sleep or asyncio.sleep
        self.kube = kube
        self.election = election
        self.resync_s = resync_s
        self.staleness = staleness or StalenessPolicy()
        self.controller: ImportController | None = None
        self.elector: LeaderElector | None = None
        self.terms = 0  # times this replica started the controller
        self._hub: KubeClient | None = None
        self._members: list[Member] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """The API-server clients: a section that cannot be loaded raises here, before anything runs
        (the clients made so far closed)."""
        if self._hub is not None:
            return
        k = self.kube
        try:
            self._hub = await KubeClient.connect(k.server, k.kubeconfig)
            for m in k.members:
                client = await KubeClient.connect(m.server, m.kubeconfig)
                self._members.append(Member(m.name, client, m.rtt_ms, m.priority))
        except BaseException:
            for c in [self._hub, *(m.client for m in self._members)]:
                if c is not None:
                    await c.close()
            self._hub, self._members = None, []
            raise

    async def start(self) -> None:
        await self.connect()
        assert self._hub is not None
        k = self.kube
        self._task = asyncio.create_task(self._follow_leadership())
        e = self.election
        if e is None:
            self._changed.set()
            return
        lease_ns, lease_name = k.lease_ref
        self.elector = LeaderElector(
            self._hub, name=e.name or lease_name, namespace=e.namespace or lease_ns,
            identity=e.identity or default_identity(), lease_duration_s=e.lease_duration_s,
            renew_deadline_s=e.renew_deadline_s, retry_period_s=e.retry_period_s,
            on_change=lambda _leader: self._changed.set(), clock=self.clock, sleep=self.sleep,
        )  # fmt: skip
        self.elector.start()

    def _leads(self) -> bool:
        """Asked by the controller before each write (``leading``): the Lease held, renewed in time."""
        return self.elector is None or self.elector.leads()

    async def _follow_leadership(self) -> None:
        """Start the controller when this replica becomes the leader, stop it when it no longer is."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._leads() and self.controller is None:
                assert self._hub is not None
                k = self.kube
                self.controller = ImportController(
                    self._hub, self._members, follow=(k.namespace, k.name), parent=k.parent,
                    resync_s=self.resync_s, leading=self._leads, parent_mode_only=k.parent_mode_only,
                    staleness=self.staleness, clock=self.clock, sleep=self.sleep,
                )  # fmt: skip
                self.terms += 1
                log.info("hub controller: running (import %s/%s, members %s)", k.namespace, k.name,
                         ", ".join(m.name for m in self._members))  # fmt: skip
                await self.controller.start()
            elif not self._leads() and self.controller is not None:
                ctl, self.controller = self.controller, None
                log.info("hub controller: no longer the leader; stopped")
                await _stop_quietly(ctl)

    async def stop(self) -> None:
        """Stop the controller, release the Lease and close the clients: each step whatever the one
        before it raised (a controller that failed must not keep the Lease held until it expires), and
        all of them also when this stop is cancelled, once or more (``stop_to_the_end``: a second cancel
        cut the step it landed in, the Lease's release among them); the cancellation raised after."""
        await stop_to_the_end(self._stop(), "hub controller: stopping", log, STOP_BOUND_S + STUCK_S)

    async def _stop(self) -> None:
        try:
            try:
                if self._task is not None:
                    await cancel_and_wait(self._task, "hub controller: the leadership follower", log,
                                          ends_within_s=FOLLOWER_STOP_S)  # fmt: skip
            finally:  # (also when this stop is cancelled while the follower ends: a reload giving up)
                if self.controller is not None:
                    ctl, self.controller = self.controller, None
                    await _stop_quietly(ctl)
        finally:
            try:
                if self.elector is not None:
                    await self.elector.stop()  # releases the Lease: a standby takes over at its next try
            finally:
                for client in [self._hub, *(m.client for m in self._members)]:
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.close()

    def dead(self) -> str | None:
        """Why this replica's controller loop ended on its own (a bug), or None: a liveness failure (the
        loop never comes back by itself, and the Lease would stay held), or the leader election's (this
        replica would never lead again, nor release the Lease)."""
        if self.elector is not None and (why := self.elector.dead()) is not None:
            return why
        return None if self.controller is None else self.controller.dead()

    def problem(self) -> str | None:
        """Why this replica is not ready: the controller it runs cannot see a member or write the hub. A
        standby is ready."""
        if self.controller is None:
            return None if not self._leads() else "starting"
        return self.controller.problem()

    def status(self) -> dict[str, Any]:
        ctl = self.controller
        return {
            "leader": self._leads() if self.elector is not None else None,
            "holder": self.elector.holder if self.elector is not None else None,
            "running": ctl is not None,
            "terms": self.terms,
            "reconciles": ctl.reconciles if ctl is not None else 0,
            "imports": sorted(f"{ns}/{name}" for ns, name in ctl.written) if ctl is not None else [],
            "problem": self.problem(),
        }


class FileFollower:
    """The clusters file under a running ``kvgate hub-controller``: a changed ``kubernetes:`` section
    restarts the controller with it (the old one stopped first: under leader election its Lease is
    released and competed for again, so a standby may lead the new term). The new section's clients are
    made before the old controller stops: one that cannot be loaded is refused, the running controller
    kept, and tried again every ``retry_s`` (a Secret may reach the pod after the ConfigMap). A section
    removed is refused alike (a controller needs one). Other keys of the file are not used."""

    def __init__(
        self, cfile: ClustersFile, hc: HubController, make: Callable[[KubeImports], HubController]
    ) -> None:
        self.cfile, self.hc, self.make = cfile, hc, make
        self.retry_s = RETRY_S
        self.error: str | None = None  # why the file's section is not the running one
        self.restarts = 0
        self._refused: tuple[KubeImports | None, float] | None = None  # (section, loop time refused)

    async def check(self) -> None:
        """One check (the loop calls it every ``cfile.check_every_s``)."""
        loop = asyncio.get_running_loop()
        self.cfile.maybe_reload(loop.time())
        kube = self.cfile.config.kubernetes
        if kube == self.hc.kube:
            self.error = self._refused = None
            return
        if (
            self._refused is not None
            and self._refused[0] == kube
            and loop.time() < self._refused[1] + self.retry_s
        ):
            return
        if kube is None:
            self._refuse(kube, "the kubernetes section was removed (a controller needs one)")
            return
        new = self.make(kube)
        try:
            await new.connect()
        except Exception as e:  # kubernetes_asyncio raises many kinds on a bad kubeconfig
            self._refuse(kube, f"{type(e).__name__}: {e}")
            return
        old, self.hc = self.hc, new
        await old.stop()
        await new.start()
        self.error = self._refused = None
        self.restarts += 1
        members = ", ".join(m.name for m in kube.members)
        log.warning("clusters file: kubernetes section applied (controller restarted): import %s/%s, "
                    "members %s", kube.namespace, kube.name, members)  # fmt: skip

    def _refuse(self, kube: KubeImports | None, why: str) -> None:
        error = f"kubernetes section not applied (the running one is kept): {why}"
        if error != self.error:
            log.error("clusters file: %s; retrying every %.0fs", error, self.retry_s)
        self.error = error
        self._refused = (kube, asyncio.get_running_loop().time())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfile.check_every_s)
            await self.check()


async def _stop_quietly(ctl: ImportController) -> None:
    try:
        await ctl.stop()
    except Exception:
        log.exception("hub controller: the import controller's stop failed")


def _health(hc: HubController, follower: FileFollower | None = None) -> FrontServer:
    def current() -> HubController:  # the one running now: a reload may have replaced it
        return hc if follower is None else follower.hc

    async def healthz(_r: Request) -> Response:
        dead = current().dead()
        if dead is not None:  # restarted by its liveness probe: the stop releases the Lease to a standby
            return json_error(503, dead)
        return Response(text="ok", content_type="text/plain")

    async def readyz(_r: Request) -> Response:
        problem = current().problem()
        if problem is None:
            return Response(text="ready", content_type="text/plain")
        return json_error(503, problem)

    async def status(_r: Request) -> Response:
        out = current().status()
        if follower is not None:
            out |= {"reload_error": follower.error, "restarts": follower.restarts}
        return Response(body=orjson.dumps(out), content_type="application/json")

    async def not_found(request: Request) -> Response | StreamResponse:
        return json_error(404, f"no route for {request.method} {request.path}")

    # (GET only: no request body is read; another method gets 405, review s23-rev-gw23 F4)
    routes: dict[str, Handler] = {
        "/healthz": get_only(healthz),
        "/readyz": get_only(readyz),
        "/v1/status": get_only(status),
    }
    return FrontServer(routes, not_found, max_body=0)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="kvgate hub-controller", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--clusters", required=True, help="the clusters file: its kubernetes section (hub, members, import)"
    )
    p.add_argument("--host", default="127.0.0.1", help="health listen address")
    p.add_argument(
        "--port",
        type=port_number,
        default=8081,
        help="health port (/healthz, /readyz, /v1/status); 0: ephemeral",
    )
    ha = p.add_argument_group("leader election (several replicas: one runs the controller)")
    ha.add_argument(
        "--ha-enable-leader-election",
        action="store_true",
        help="only the holder of a coordination.k8s.io Lease in the hub runs the controller",
    )
    ha.add_argument(
        "--ha-lease-name",
        help=f"the Lease (default: the clusters file's kubernetes.lease, else {DEFAULT_LEASE} for the "
        f"default parent, {DEFAULT_LEASE}-<parent name>-<hash> for another); gateways with "
        "kubernetes.controller true compete for the same",
    )
    ha.add_argument(
        "--ha-lease-namespace",
        help="the Lease's namespace (default: the clusters file's kubernetes.lease, else the import's)",
    )
    ha.add_argument("--ha-lease-duration", type=float, default=15.0, help="seconds (client-go's default)")
    ha.add_argument("--ha-renew-deadline", type=float, default=10.0, help="seconds")
    ha.add_argument("--ha-retry-period", type=float, default=2.0, help="seconds")
    p.add_argument(
        "--resync-period",
        type=float,
        default=RESYNC_S,
        help="seconds between readings of the hub's imports (each one reconciled with the members)",
    )
    p.add_argument(
        "--kube-stale-after",
        type=float,
        default=None,
        help="seconds out of sync with a member's API server after which its InferencePool watch is logged "
        "as stale (default 120; kvgate_reflector_last_sync_age_seconds has the age)",
    )
    p.add_argument("--log-level", type=log_level, default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    # SIGHUP never ends it (review s20-fixes-a I1, as the gateways): ignored until the loop's handler is in.
    with sighup_ignored():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    off_loop_stderr()  # (as every door's: a stderr nobody reads stalls no Lease renewal, s26-rev-gw26 F3)
    try:
        cfile = ClustersFile(args.clusters)
        kube = cfile.config.kubernetes
    except ClustersError as e:
        print(f"kvgate hub-controller: clusters file error: {e}", file=sys.stderr, flush=True)
        return 2
    if kube is None:
        print("kvgate hub-controller: the clusters file has no kubernetes section (hub, members, import)",
              file=sys.stderr, flush=True)  # fmt: skip
        return 2
    try:
        staleness = hub_policy(args.kube_stale_after)
    except StalenessFlagError as e:
        print(f"kvgate hub-controller: {e}", file=sys.stderr, flush=True)
        return 2
    election = None
    if args.ha_enable_leader_election:
        election = Election(args.ha_lease_name, args.ha_lease_namespace, args.ha_lease_duration,
                            args.ha_renew_deadline, args.ha_retry_period)  # fmt: skip

    def make(k: KubeImports) -> HubController:
        return HubController(k, election, resync_s=args.resync_period, staleness=staleness)

    async def run() -> None:
        assert kube is not None
        hc = make(kube)
        try:
            await hc.start()
        except Exception as e:  # a section that cannot be loaded: say so, exit 2
            await hc.stop()
            raise ClustersError("kubernetes", f"cannot load: {type(e).__name__}: {e}") from e
        follower = FileFollower(cfile, hc, make)
        front = _health(hc, follower)
        server = await asyncio.get_running_loop().create_server(front.protocol, args.host, args.port)
        port = server.sockets[0].getsockname()[1]
        say(f"kvgate hub-controller: health on http://{args.host}:{port} (import {kube.namespace}/"
            f"{kube.name}, {len(kube.members)} members, leader election "
            f"{'on' if election else 'off'})")  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        serve_on_sighup(loop, log, "kvgate hub-controller (it follows its clusters file's modification time)")
        watch = asyncio.create_task(follower.run())
        await stop.wait()
        await cancel_and_wait(watch, "hub controller: the clusters file check", log)
        server.close()
        front.close_all()
        await follower.hc.stop()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except ClustersError as e:
        print(f"kvgate hub-controller: clusters file error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0
