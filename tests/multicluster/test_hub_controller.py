"""``kvgate hub-controller`` end to end: two real processes electing a leader on a Lease in the hub, three
API-server doubles (hub, two members), the members' pools changed and every result read with the real
kubectl; and the global gateway following the import read-only (``kubernetes.controller: false``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web

from kvgate.k8s import crdrules
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.multicluster.clusters import load
from kvgate.multicluster.imports import CONTROLLER_NAME, EXPORT_ANNOTATION
from kvgate.multicluster.serve import GlobalGateway

from .kube_objects import inference_pool

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
IMPORT_CRD = (
    Path(__file__).resolve().parents[2]
    / "deploy/crds/inferencepoolimports.inference.networking.x-k8s.io.yaml"
)
LIMIT = 30.0  # seconds any one condition may take on a loaded machine


class Recording(ApiServerDouble):
    """A double that keeps the method and path of every request (to show who writes)."""

    def __init__(self) -> None:
        super().__init__(bookmark_interval=0.2)
        self.calls: list[tuple[str, str]] = []
        self.after_write: Callable[[], None] | None = None  # called as each write is applied

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        resp = await super()._handle(request)
        if self.after_write is not None and request.method not in ("GET", "HEAD"):
            self.after_write()
        return resp

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] not in ("GET", "HEAD")]


@pytest.fixture
async def doubles() -> AsyncIterator[tuple[Recording, Recording, Recording]]:
    async with Recording() as hub, Recording() as east, Recording() as west:
        yield hub, east, west


def _pool_yaml(name: str, gateway: str, *, exported: bool) -> str:
    return json.dumps(inference_pool(name, gateway, exported=exported))


async def _kubectl(server: str, *args: str, stdin: str | None = None) -> str:
    assert KUBECTL is not None
    cmd = [KUBECTL, "--server", server, "--request-timeout=20s", *args]
    res = await asyncio.to_thread(
        subprocess.run, cmd, input=stdin, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


_IMPORT = "inferencepoolimports.inference.networking.x-k8s.io"
_POOL = "inferencepools.inference.networking.k8s.io"
_OURS = f'.status.controllers[?(@.name=="{CONTROLLER_NAME}")]'


async def _exporters(hub: str) -> str:
    """The import's exporting clusters as kubectl prints them ("" when there is no import)."""
    assert KUBECTL is not None
    cmd = [KUBECTL, "--server", hub, "get", _IMPORT, "llama", "--ignore-not-found",
           "-o", f"jsonpath={{{_OURS}.exportingClusters[*].name}}"]  # fmt: skip
    res = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


async def _parent(hub: str) -> str:
    cond = f'{_OURS}.parents[0].conditions[?(@.type=="ResolvedRefs")]'
    ref = f"{_OURS}.parents[0].parentRef"
    path = "{" + f"{ref}.kind" + "}/{" + f"{ref}.name" + "}/{" + f"{cond}.status" + "}"
    return await _kubectl(hub, "get", _IMPORT, "llama", "--ignore-not-found", "-o", f"jsonpath={path}")


async def _exported(member: str) -> str:
    cond = f'.status.parents[?(@.controllerName=="{CONTROLLER_NAME}")].conditions[?(@.type=="Exported")]'
    return await _kubectl(member, "get", _POOL, "llama", "-o", f"jsonpath={{{cond}.reason}}")


async def _until(probe: Callable[[], Any], want: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while (got := await probe()) != want:
        assert loop.time() < deadline, f"{what}: {got!r}, expected {want!r}"
        await asyncio.sleep(0.1)


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    port: int

    async def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/v1/status"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            out: dict[str, Any] = await r.json()
            return out

    async def readyz(self) -> int:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.port}/readyz") as r:
            return r.status


ELECTION = ("--ha-enable-leader-election", "--ha-lease-duration", "2", "--ha-renew-deadline", "1.5",
            "--ha-retry-period", "0.2")  # fmt: skip


async def _launch(clusters: Path, log: Path, *flags: str) -> Proc:
    """``kvgate hub-controller`` (``flags``: default leader election with short timings)."""
    with open(log, "wb") as err:  # noqa: ASYNC230 - the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "hub-controller", "--clusters", str(clusters),
            "--port", "0", *(flags or ELECTION),
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    if "health on http://127.0.0.1:" not in line:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"not started: {line!r} {log.read_text()[-3000:]}")  # noqa: ASYNC240
    port = int(line.split("health on http://127.0.0.1:")[1].split()[0])
    return Proc(proc, port)


def _clusters_file(tmp: Path, hub: str, east: str, west: str, *, controller: bool) -> Path:
    f = tmp / f"clusters-{controller}.yaml"
    f.write_text(
        f"kubernetes:\n  server: {hub}\n  import: default/llama\n"
        # The chart's default parent: the hub's Service (core group), an object that exists.
        "  parent: {group: '', kind: Service, name: global-hub}\n"
        # The writers' Lease named, as the chart names it (the default would be the parent's).
        "  lease: default/kvgate-hub-controller\n"
        f"  controller: {str(controller).lower()}\n  members:\n"
        f"  - {{name: east, server: '{east}', rtt_ms: 5}}\n  - {{name: west, server: '{west}', rtt_ms: 40}}\n"
    )
    return f


async def test_two_hub_controllers_one_leader_and_a_takeover(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path
) -> None:
    hub_d, east_d, west_d = doubles
    hub, east, west = hub_d.url, east_d.url, west_d.url
    await _kubectl(east, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    await _kubectl(west, "create", "-f", "-", stdin=_pool_yaml("llama", "10.2.0.2:8080", exported=False))
    clusters = _clusters_file(tmp_path, hub, east, west, controller=True)
    procs = list(await asyncio.gather(*(_launch(clusters, tmp_path / f"ctl{i}.log") for i in range(2))))
    try:
        await _until(lambda: _exporters(hub), "east", "the import's exporters")
        await _until(lambda: _exported(east), "Exported", "east's Exported condition")
        await _until(lambda: _parent(hub), "Service/global-hub/True", "the gateway's parent entry")
        crd = yaml.safe_load(IMPORT_CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        imp = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")
        jsonschema.Draft7Validator(crdrules.closed(crd)).validate(imp)  # closed: as pruning sees it
        states = [await p.status() for p in procs]
        assert sorted(s["running"] for s in states) == [False, True]  # one leader runs the controller
        leader, standby = (procs[0], procs[1]) if states[0]["running"] else (procs[1], procs[0])
        assert [await p.readyz() for p in procs] == [200, 200]  # a standby is ready too
        holder = await _kubectl(hub, "get", "lease", "kvgate-hub-controller", "-o",
                                "jsonpath={.spec.holderIdentity}")  # fmt: skip
        assert holder == (await leader.status())["holder"]

        # west starts exporting (kubectl annotate): the leader lists it.
        await _kubectl(west, "annotate", _POOL, "llama", f"{EXPORT_ANNOTATION}=ClusterSet")
        await _until(lambda: _exporters(hub), "east west", "the import's exporters")
        await _until(lambda: _exported(west), "Exported", "west's Exported condition")

        # The leader stops cleanly: it releases the Lease, and leaves the status as it is.
        leader.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(leader.proc.wait(), LIMIT) == 0
        assert (
            await _parent(hub) == "Service/global-hub/True"
        )  # its stop did not take the gateway's parent entry
        await _until(lambda: _running(standby), True, "the standby running the controller")

        # The new leader follows the members: east stops exporting, then nothing does.
        await _kubectl(east, "annotate", _POOL, "llama", f"{EXPORT_ANNOTATION}-")
        await _until(lambda: _exporters(hub), "west", "the import's exporters")
        await _until(lambda: _exported(east), "", "east's Exported condition (removed)")
        await _kubectl(west, "delete", _POOL, "llama")
        await _until(lambda: _exporters(hub), "", "the import (deleted)")
    finally:
        for p in procs:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()


async def _running(p: Proc) -> bool:
    return bool((await p.status())["running"])


async def test_a_gateway_with_a_standalone_controller_only_reads(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path
) -> None:
    """``kubernetes.controller: false``: the gateway routes to what the members export and writes nothing,
    to the hub or the members (the standalone controller is the one writer)."""
    hub_d, east_d, west_d = doubles
    await _kubectl(east_d.url, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    clusters = _clusters_file(tmp_path, hub_d.url, east_d.url, west_d.url, controller=False)
    gw = GlobalGateway(load(clusters), "kvgate", seed=0)
    await gw.start("127.0.0.1", 0)
    try:
        await _until(lambda: _names(gw), ["east"], "the gateway's clusters")
        await _kubectl(
            west_d.url, "create", "-f", "-", stdin=_pool_yaml("llama", "10.2.0.2:8080", exported=True)
        )
        await _until(lambda: _names(gw), ["east", "west"], "the gateway's clusters")
    finally:
        await gw.stop()
    create = ("POST", "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools")
    assert [d.writes() for d in doubles] == [[], [create], [create]]  # kubectl's creates only
    assert hub_d.calls == []  # it never even connected to the hub
    assert await _exporters(hub_d.url) == ""


async def _names(gw: GlobalGateway) -> list[str]:
    return list(gw.router.states)


async def test_a_refused_hub_write_makes_the_controller_unready_until_it_succeeds(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path
) -> None:
    """RBAC missing in the hub (403 on imports): the controller keeps retrying and says why it is not
    ready; once allowed, the import is written and it is ready."""
    from kvgate.multicluster.hub_controller import HubController

    hub_d, east_d, west_d = doubles
    await _kubectl(east_d.url, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    hub_d.forbid(R.INFERENCE_POOL_IMPORT)
    kube = load(_clusters_file(tmp_path, hub_d.url, east_d.url, west_d.url, controller=True)).kubernetes
    assert kube is not None
    hc = HubController(kube)
    await hc.start()
    try:
        await _until(lambda: _problem(hc), "403", "the controller's problem")
        hub_d.forbid(R.INFERENCE_POOL_IMPORT, False)
        await _until(lambda: _problem(hc), None, "the controller's problem")
        assert await _exporters(hub_d.url) == "east"
    finally:
        await hc.stop()


async def _problem(hc: Any) -> str | None:
    p = hc.problem()
    if p is not None and p.startswith("hub:") and "ServerDisconnectedError" in p:
        return "dropped"
    return "403" if p is not None and p.startswith("hub:") and "403" in p else p


class Dropping(Recording):
    """A hub whose connection drops (no answer at all) on every request for imports while ``drop`` is
    set: the client sees aiohttp's ServerDisconnectedError, as from a restarting API server or a proxy."""

    drop = False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.drop and "inferencepoolimports" in request.path:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # (never sent: the connection is gone)
        return await super()._handle(request)


def _election() -> Any:
    from kvgate.multicluster.hub_controller import Election

    return Election(namespace="default", lease_duration_s=2.0, renew_deadline_s=1.5, retry_period_s=0.2,
                    identity="ctl-a")  # fmt: skip


async def _holder(hub: str) -> str:
    path = "jsonpath={.spec.holderIdentity}"
    return await _kubectl(hub, "get", "lease", "kvgate-hub-controller", "-o", path)


async def test_a_hub_that_drops_the_connection_makes_the_controller_unready_until_it_answers(
    tmp_path: Path,
) -> None:
    """The hub drops the connection on the controller's import writes: the reconcile loop keeps retrying
    (it used to die, leaving /readyz at 200 while the Lease was still renewed) and says why it is not
    ready; once the hub answers, the import is written and it is ready; its stop releases the Lease."""
    from kvgate.multicluster.hub_controller import HubController

    async with Dropping() as hub_d, Recording() as east_d, Recording() as west_d:
        pool = _pool_yaml("llama", "10.1.0.2:8080", exported=True)
        await _kubectl(east_d.url, "create", "-f", "-", stdin=pool)
        hub_d.drop = True
        kube = load(_clusters_file(tmp_path, hub_d.url, east_d.url, west_d.url, controller=True)).kubernetes
        assert kube is not None
        hc = HubController(kube, _election())
        await hc.start()
        try:
            await _until(lambda: _problem(hc), "dropped", "the controller's problem")
            await asyncio.sleep(1.0)  # it stays so: retried, not a loop that died
            assert await _problem(hc) == "dropped" and hc.status()["running"]
            hub_d.drop = False
            await _until(lambda: _problem(hc), None, "the controller's problem")
            assert await _exporters(hub_d.url) == "east"
        finally:
            await hc.stop()
        assert await _holder(hub_d.url) == ""  # released


async def test_a_controller_whose_loop_failed_still_releases_the_lease(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconcile that fails in a way nobody foresaw (a bug) ends the loop: /readyz says so instead of
    200, and stopping the process still releases the Lease and closes the clients (the failure used to
    come back out of the controller's stop, skipping both)."""
    from kvgate.multicluster.hub_controller import HubController, _health
    from kvgate.multicluster.imports import ImportController

    async def broken(self: ImportController) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ImportController, "reconcile", broken)
    hub_d, east_d, west_d = doubles
    await _kubectl(east_d.url, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    kube = load(_clusters_file(tmp_path, hub_d.url, east_d.url, west_d.url, controller=True)).kubernetes
    assert kube is not None
    hc = HubController(kube, _election())
    await hc.start()
    server = await asyncio.get_running_loop().create_server(_health(hc).protocol, "127.0.0.1", 0)
    health = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        await _until(lambda: _holder(hub_d.url), "ctl-a", "the Lease's holder")
        await _until(lambda: _stopped_on(hc), True, "the controller's problem")
        async with aiohttp.ClientSession() as http:  # unready, and not alive: its probe restarts it
            for path in ("/readyz", "/healthz"):
                async with http.get(health + path) as r:
                    assert r.status == 503 and "a bug" in (await r.json())["error"]["message"], path
    finally:
        server.close()
        await hc.stop()
    assert await _holder(hub_d.url) == ""  # released all the same
    assert hc._hub is not None and hc._hub.api.rest_client.pool_manager.closed


async def test_a_stop_cancelled_while_the_follower_ends_still_stops_the_controller(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path
) -> None:
    """The process's stop cancels a reload under way while it stops the old controller: the controller's
    member watches still stop, the Lease is released and the clients closed."""
    from kvgate.multicluster.hub_controller import HubController

    hub_d, east_d, west_d = doubles
    await _kubectl(east_d.url, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    kube = load(_clusters_file(tmp_path, hub_d.url, east_d.url, west_d.url, controller=True)).kubernetes
    assert kube is not None
    hc = HubController(kube, _election())
    await hc.start()
    try:
        await _until(lambda: _exporters(hub_d.url), "east", "the import's exporters")
        ctl = hc.controller
        assert ctl is not None
        stop = asyncio.create_task(hc.stop())
        await asyncio.sleep(0)  # the stop waits for the leadership follower to end...
        stop.cancel()  # ...and is cancelled there
        await asyncio.wait([stop])
        assert stop.cancelled()
        assert [r._task is None for r in ctl._reflectors] == [True, True]  # the watches stopped
        assert await _holder(hub_d.url) == ""  # released
        assert hc._hub is not None and hc._hub.api.rest_client.pool_manager.closed
    finally:
        await hc.stop()


async def test_a_dead_election_loop_is_a_liveness_failure_and_the_lease_is_still_released(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader election's loop ends on an error nobody foresaw: the replica no longer acts as the
    leader (its controller stops), dead() says why (its liveness probe restarts it; it used to go
    unnoticed), and its stop still releases the Lease."""
    from kvgate.k8s.lease import LeaderElector
    from kvgate.multicluster.hub_controller import HubController

    hub_d, east_d, west_d = doubles
    kube = load(_clusters_file(tmp_path, hub_d.url, east_d.url, west_d.url, controller=True)).kubernetes
    assert kube is not None
    hc = HubController(kube, _election())
    await hc.start()
    try:
        await _until(lambda: _holder(hub_d.url), "ctl-a", "the Lease's holder")

        async def broken(self: LeaderElector) -> bool:
            raise RuntimeError("an election bug")

        monkeypatch.setattr(LeaderElector, "try_acquire_or_renew", broken)
        await _until(lambda: _value("an election bug" in (hc.dead() or "")), True, "dead()")
        await _until(lambda: _value(hc.status()["running"]), False, "the controller stopped")
    finally:
        await hc.stop()
    assert await _holder(hub_d.url) == ""  # released all the same


async def _value(x: Any) -> Any:
    return x


async def _stopped_on(hc: Any) -> bool:
    p = hc.problem()
    return p is not None and p.startswith("reconcile loop stopped:") and "a bug" in p


class LeaseTrouble(Recording):
    """A hub whose Lease requests get their connection dropped while ``unreachable`` is set (the imports
    still answer: only a running controller would write them)."""

    unreachable = False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.unreachable and "/leases" in request.path:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # (never sent)
        return await super()._handle(request)


@pytest.mark.parametrize("how", ["taken", "unreachable"])
async def test_a_leader_that_loses_its_lease_stops_its_controller(how: str, tmp_path: Path) -> None:
    """The Lease is taken by another holder (kubectl writes it), or the hub stops answering the Lease's
    renewals: the leader steps down (by its renew deadline) and its controller stops, so a change in the
    members is no longer written by it."""
    from kvgate.multicluster.hub_controller import HubController

    async with LeaseTrouble() as hub_d, Recording() as east_d, Recording() as west_d:
        hub, east, west = hub_d.url, east_d.url, west_d.url
        await _kubectl(east, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
        await _kubectl(west, "create", "-f", "-", stdin=_pool_yaml("llama", "10.2.0.2:8080", exported=False))
        kube = load(_clusters_file(tmp_path, hub, east, west, controller=True)).kubernetes
        assert kube is not None
        hc = HubController(kube, _election())
        await hc.start()
        try:
            await _until(lambda: _exporters(hub), "east", "the import's exporters")
            assert hc.status()["running"] and hc.status()["holder"] == "ctl-a"
            if how == "taken":
                renew = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                spec = {"holderIdentity": "intruder", "leaseDurationSeconds": 600, "renewTime": renew}
                await _kubectl(hub, "patch", "lease", "kvgate-hub-controller", "--type", "merge",
                               "-p", json.dumps({"spec": spec}))  # fmt: skip
            else:
                hub_d.unreachable = True
            await _until(lambda: _running_in(hc), False, "the controller (stopped)")
            assert hc.problem() is None  # not the leader: a ready standby
            await _kubectl(west, "annotate", _POOL, "llama", f"{EXPORT_ANNOTATION}=ClusterSet")
            await asyncio.sleep(1.5)  # a running controller lists west within a few hundred ms
            assert await _exporters(hub) == "east"
            if how == "taken":
                assert hc.status()["holder"] == "intruder"
        finally:
            await hc.stop()


async def test_the_controller_asks_the_elector_before_each_write(tmp_path: Path) -> None:
    """Between a step-down and the controller's stop (the follower has not run yet), or once the renew
    deadline passed with the election loop held up, the running controller sends nothing: it is wired
    to the elector (``leading``), not only stopped by it."""
    from kvgate.multicluster.hub_controller import Election, HubController

    async with Recording() as hub_d, Recording() as east_d, Recording() as west_d:
        hub, east, west = hub_d.url, east_d.url, west_d.url
        await _kubectl(east, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
        await _kubectl(west, "create", "-f", "-", stdin=_pool_yaml("llama", "10.2.0.2:8080", exported=False))
        kube = load(_clusters_file(tmp_path, hub, east, west, controller=True)).kubernetes
        assert kube is not None
        # Renewals far apart: the election loop does not run again during the test.
        election = Election(namespace="default", lease_duration_s=120.0, renew_deadline_s=90.0,
                            retry_period_s=60.0, identity="ctl-a")  # fmt: skip
        hc = HubController(kube, election)
        await hc.start()
        try:
            await _until(lambda: _exporters(hub), "east", "the import's exporters")
            await _until(lambda: _exported(east), "Exported", "east's Exported condition")
            ctl, elector = hc.controller, hc.elector
            assert ctl is not None and elector is not None
            elector.is_leader = False  # stepped down; on_change not called: the controller still runs
            await _kubectl(west, "annotate", _POOL, "llama", f"{EXPORT_ANNOTATION}=ClusterSet")
            await _until(lambda: _stepped_down(ctl), True, "a pass ended by the step-down")
            # (no hub failure: review s8-k8s R3)
            assert hc.controller is ctl and await _exporters(hub) == "east" and ctl.problem() is None
            elector.is_leader = True  # leading, but the renew deadline passed (the loop held up)
            elector._renewed_at -= 91.0
            ended = ctl.stepped_down
            ctl.refeed()

            async def ended_again() -> bool:
                return bool(ctl.stepped_down > ended)

            await _until(ended_again, True, "a quiet retry (0.5 s, 1 s, ...) refused again")
            assert await _exporters(hub) == "east" and ctl.problem() is None
            elector._renewed_at += 91.0
            await _until(lambda: _exporters(hub), "east west", "the import's exporters")
        finally:
            await hc.stop()


async def _stepped_down(ctl: Any) -> bool:
    return bool(ctl.stepped_down > 0)


async def _running_in(hc: Any) -> bool:
    return bool(hc.status()["running"])


async def test_a_new_leader_deletes_the_import_its_predecessor_created(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path
) -> None:
    """The leader crashes (SIGKILL: nothing released); east stops exporting while no controller runs; the
    next leader, a new process that never wrote the import, reads it back from the hub and deletes it."""
    hub_d, east_d, west_d = doubles
    hub, east = hub_d.url, east_d.url
    await _kubectl(east, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    clusters = _clusters_file(tmp_path, hub, east, west_d.url, controller=True)
    procs = [await _launch(clusters, tmp_path / "first.log")]
    try:
        await _until(lambda: _exporters(hub), "east", "the import's exporters")
        await _until(lambda: _exported(east), "Exported", "east's Exported condition")
        procs[0].proc.kill()
        await procs[0].proc.wait()
        await _kubectl(east, "annotate", _POOL, "llama", f"{EXPORT_ANNOTATION}-")
        procs.append(await _launch(clusters, tmp_path / "second.log"))
        await _until(lambda: _exporters(hub), "", "the import (deleted by the next leader)")
        await _until(lambda: _exported(east), "", "east's Exported condition (removed)")
        assert (await procs[1].status())["imports"] == []
    finally:
        for p in procs:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()


async def _drop_parents(hub: str) -> None:
    """What an older kvgate gateway's stop wrote: kvgate's controllers[] entry without its parents."""
    imp = json.loads(await _kubectl(hub, "get", _IMPORT, "llama", "-o", "json"))
    for c in imp["status"]["controllers"]:
        if c["name"] == CONTROLLER_NAME:
            c.pop("parents", None)
    patch = {"metadata": {"resourceVersion": imp["metadata"]["resourceVersion"]},
             "status": {"controllers": imp["status"]["controllers"]}}  # fmt: skip
    await _kubectl(hub, "patch", _IMPORT, "llama", "--subresource=status", "--type=merge",
                   "-p", json.dumps(patch))  # fmt: skip


def _has_parent(hub_d: Recording) -> bool:
    imp = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")
    ours = [c for c in imp["status"]["controllers"] if c["name"] == CONTROLLER_NAME]
    return bool(ours and ours[0].get("parents"))


async def test_an_upgrade_to_the_standalone_controller_keeps_the_parent_entry(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path
) -> None:
    """The upgrade: a gateway that ran the controller (``controller: true``) and the new standalone
    controller both run, then the old gateway stops. The parent entry (the global gateway's, the same
    for both) stays; and when an older release's gateway removes it on its stop anyway, the standalone
    controller writes it back at its next resync (it does not trust what it wrote earlier)."""
    from kvgate.multicluster.hub_controller import HubController

    hub_d, east_d, west_d = doubles
    hub = hub_d.url
    await _kubectl(east_d.url, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    clusters = _clusters_file(tmp_path, hub, east_d.url, west_d.url, controller=True)
    old = GlobalGateway(load(clusters), "kvgate", seed=0)
    await old.start("127.0.0.1", 0)
    kube = load(clusters).kubernetes
    assert kube is not None
    hc = HubController(kube, resync_s=0.5)
    old_stopped = False
    try:
        await _until(lambda: _parent(hub), "Service/global-hub/True", "the gateway's parent entry")
        await hc.start()
        await _until(lambda: _running_in(hc), True, "the standalone controller")
        await _until(lambda: _problem(hc), None, "the standalone controller's problem")
        await old.stop()  # the old gateway pod terminates
        old_stopped = True
        await asyncio.sleep(1.5)  # three resyncs
        assert await _parent(hub) == "Service/global-hub/True"
        # (the drop seen as each write lands, not after kubectl exits: a resync 0.5 s on may have
        # written the entry back by then; at load ~15 it had)
        states: list[bool] = []
        hub_d.after_write = lambda: states.append(_has_parent(hub_d))
        await _drop_parents(hub)  # as an older release's gateway did on its stop
        assert False in states, states  # the drop was written (its write left no entry)
        await _until(lambda: _parent(hub), "Service/global-hub/True", "the parent entry (written back)")
        assert await _exporters(hub) == "east"
    finally:
        await hc.stop()
        if not old_stopped:
            await old.stop()


async def test_a_changed_kubernetes_section_restarts_the_controller_in_place(
    doubles: tuple[Recording, Recording, Recording], tmp_path: Path
) -> None:
    """``kvgate hub-controller`` watches its clusters file as the gateways do: a member added restarts
    the controller with it (the import then lists both); a section that cannot be loaded is refused
    (``/v1/status`` says why) and the running controller goes on; SIGTERM still exits 0."""
    hub_d, east_d, west_d = doubles
    hub, east, west = hub_d.url, east_d.url, west_d.url
    await _kubectl(east, "create", "-f", "-", stdin=_pool_yaml("llama", "10.1.0.2:8080", exported=True))
    await _kubectl(west, "create", "-f", "-", stdin=_pool_yaml("llama", "10.2.0.2:8080", exported=True))
    f = tmp_path / "clusters.yaml"
    head = f"kubernetes:\n  server: {hub}\n  import: default/llama\n  members:\n"
    f.write_text(head + f"  - {{name: east, server: '{east}'}}\n")
    p = await _launch(f, tmp_path / "hc.log", "--resync-period", "30")
    try:
        await _until(lambda: _exporters(hub), "east", "the import's exporters")
        f.write_text(head + f"  - {{name: east, server: '{east}'}}\n  - {{name: west, server: '{west}'}}\n")
        await _until(lambda: _exporters(hub), "east west", "the import's exporters after the reload")
        assert (await p.status())["restarts"] == 1

        bad = head + f"  - {{name: east, kubeconfig: '{tmp_path / 'none'}'}}\n"
        f.write_text(bad)

        async def reload_error() -> bool:
            return "kubernetes section not applied" in str((await p.status())["reload_error"])

        await _until(reload_error, True, "the refused section")
        status = await p.status()
        assert status["running"] and status["restarts"] == 1 and await p.readyz() == 200
        # The running controller (east and west) still follows the members.
        await _kubectl(west, "annotate", _POOL, "llama", f"{EXPORT_ANNOTATION}-")
        await _until(lambda: _exporters(hub), "east", "the import's exporters (the running controller)")
        p.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(p.proc.wait(), 30) == 0
    finally:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()
    log = (tmp_path / "hc.log").read_text()
    assert "kubernetes section applied (controller restarted)" in log and "Traceback" not in log, log[-3000:]
