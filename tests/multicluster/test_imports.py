"""The hub controller against three API-server doubles (two member clusters, one hub), over real HTTP."""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.k8s import crdrules
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient, load_configuration
from kvgate.multicluster import imports
from kvgate.multicluster.clusters import ClustersConfig, ParentRef
from kvgate.multicluster.imports import (
    CONTROLLER_NAME,
    EXPORT_ANNOTATION,
    RETRY_MAX_S,
    ImportController,
    Member,
    retry_pause,
)

from .kube_objects import exporters as _exporters
from .kube_objects import inference_pool


def _pool(name: str, *, exported: bool, gateway: str | None = None) -> dict[str, Any]:
    return inference_pool(name, gateway, exported=exported, aggregate=True)  # (its aggregate URL too)


async def _until(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    """``cond`` polled until true: the controller's tasks on a loaded machine (10 s by default before, 5-20 s
    given at some calls)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, f"not reached within {limit_s}s: {inspect.getsource(cond).strip()}"
        await asyncio.sleep(0.05)


async def _stopped(stop: Awaitable[None], what: str, limit_s: float = 30.0) -> None:
    """A stop bounded well below the suite's timeout, and named when it does not end."""
    try:
        async with asyncio.timeout(limit_s):
            await stop
    except TimeoutError:
        pytest.fail(f"{what} did not stop within {limit_s}s")


@pytest.fixture
async def doubles() -> AsyncIterator[tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble]]:
    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub,
        ApiServerDouble(bookmark_interval=0.2) as east,
        ApiServerDouble(bookmark_interval=0.2) as west,
    ):
        yield hub, east, west


async def test_exported_pools_become_import_status_and_feed_the_cluster_list(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    east_d.create(_pool("private", exported=False))
    west_d.create(_pool("llama", exported=True, gateway="10.2.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    fed: list[ClustersConfig] = []
    ctl = ImportController(clients[0], [Member("east", clients[1], rtt_ms=5), Member("west", clients[2], 40)],
                           follow=("default", "llama"), on_clusters=fed.append)  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"])
        assert _exporters(hub_d, "private") is None  # not exported: not imported
        imp = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")
        assert imp["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
        assert imp["status"]["controllers"][0]["conditions"][0]["type"] == "Accepted"
        await _until(lambda: bool(fed) and len(fed[-1].clusters) == 2)
        east = fed[-1].clusters[0]
        assert (east.name, east.gateway, east.rtt_ms) == ("east", "10.1.0.2:8080", 5)
        assert east.aggregate == "http://10.1.0.2:8080/v1/pool/aggregate"

        # west stops exporting: the import's status and the cluster list follow
        west_d.patch(R.INFERENCE_POOL, "llama", "default",
                     {"metadata": {"annotations": {EXPORT_ANNOTATION: None}}})  # fmt: skip
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        await _until(lambda: [c.name for c in fed[-1].clusters] == ["east"])

        # nothing exports it any more: the import is deleted
        east_d.delete(R.INFERENCE_POOL, "llama", "default")
        await _until(lambda: _exporters(hub_d, "llama") is None)
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_global_gateway_follows_imports(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], tmp_path: Any
) -> None:
    from kvgate.multicluster.clusters import load
    from kvgate.multicluster.serve import GlobalGateway

    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    f = tmp_path / "clusters.yaml"
    f.write_text(
        f"kubernetes:\n  server: {hub_d.url}\n  import: default/llama\n  members:\n"
        f"  - {{name: east, server: '{east_d.url}', rtt_ms: 5}}\n  - {{name: west, server: '{west_d.url}'}}\n"
    )
    gw = GlobalGateway(load(f), "kvgate", seed=0)
    await gw.start("127.0.0.1", 0)
    try:
        await _until(lambda: list(gw.router.states) == ["east"])
        west_d.create(_pool("llama", exported=True, gateway="10.2.0.2:8080"))
        await _until(lambda: list(gw.router.states) == ["east", "west"])
        # (fed first, then written: the hub may list west a moment later)
        await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"])
    finally:
        await gw.stop()


async def test_an_exporter_is_fed_to_the_gateway_before_the_hub_lists_it(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's pool that arrives during a pass (here: during its read-back of the hub) is fed to the
    gateway before that pass writes it to the hub: the gateway's clusters come first (a global gateway's
    ``/readyz`` must not say "no cluster ready" once the hub lists one of its members)."""
    hub_d, east_d, west_d = doubles
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    fed: list[list[str]] = []
    at_writes: list[tuple[list[str], tuple[str, ...]]] = []  # (fed last, exporters written)
    read_hub, write = ImportController._read_hub, ImportController._write

    async def read_hub_then_a_pool_event(self: ImportController) -> None:
        await read_hub(self)
        if not at_writes and ("default", "llama") not in self.exported:
            east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
            await _until(lambda: ("default", "llama") in self.exported)

    async def recorded_write(self: ImportController, key: Any, clusters: Any, parent: Any, **kw: Any) -> Any:
        at_writes.append((fed[-1] if fed else [], clusters))
        return await write(self, key, clusters, parent, **kw)

    monkeypatch.setattr(ImportController, "_read_hub", read_hub_then_a_pool_event)
    monkeypatch.setattr(ImportController, "_write", recorded_write)
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           follow=("default", "llama"),
                           on_clusters=lambda cfg: fed.append([c.name for c in cfg.clusters]))  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        assert at_writes and all(set(written) <= set(seen) for seen, written in at_writes), at_writes
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


# -- the Exported condition on member pools, read back with the real kubectl ----------------------------

KUBECTL = shutil.which("kubectl")
_OURS = f'.status.parents[?(@.controllerName=="{CONTROLLER_NAME}")]'


async def _kubectl(server: str, *args: str) -> str:
    assert KUBECTL is not None
    cmd = [KUBECTL, "--server", server, "--request-timeout=20s", *args]
    res = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


async def _exported(server: str, name: str) -> str:
    """status/reason of the Exported condition in kvgate's parent entry, as kubectl prints them."""
    cond = f'{_OURS}.conditions[?(@.type=="Exported")]'
    path = f"{{{cond}.status}}/{{{cond}.reason}}"
    return await _kubectl(
        server, "get", "inferencepools.inference.networking.k8s.io", name, "-o", f"jsonpath={path}"
    )


async def _until_kubectl(server: str, name: str, want: str, limit_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while (got := await _exported(server, name)) != want:
        assert loop.time() < deadline, f"Exported condition on {name}: {got!r}, expected {want!r}"
        await asyncio.sleep(0.1)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_member_pools_carry_the_exported_condition(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    hub_d, east_d, west_d = doubles
    gateway_parent = {
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inf-gw"},
        "controllerName": "example.net/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }  # fmt: skip
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    east_d.patch(R.INFERENCE_POOL, "llama", "default", {"status": {"parents": [gateway_parent]}}, status=True)
    west_d.create(_pool("llama", exported=False))
    odd = _pool("odd", exported=False)
    odd["metadata"]["annotations"][EXPORT_ANNOTATION] = "Region"  # not a value this controller serves
    west_d.create(odd)
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])])
    await ctl.start()
    try:
        await _until_kubectl(east_d.url, "llama", "True/Exported")
        pool = east_d.get(R.INFERENCE_POOL, "llama", "default")
        ours = next(p for p in pool["status"]["parents"] if p.get("controllerName") == CONTROLLER_NAME)
        assert ours["parentRef"] == {"group": "inference.networking.x-k8s.io", "kind": "InferencePoolImport",
                                     "namespace": "default", "name": "llama"}  # fmt: skip
        # The gateway controller's own entry is still there, untouched.
        assert gateway_parent in pool["status"]["parents"]
        assert await _exported(west_d.url, "llama") == "/"  # not exported: no condition
        await _until_kubectl(west_d.url, "odd", "False/NotSupported")
        assert _exporters(hub_d, "odd") is None

        # west starts exporting: True there too; east stops: its condition goes, the gateway's entry stays.
        west_d.patch(R.INFERENCE_POOL, "llama", "default",
                     {"metadata": {"annotations": {EXPORT_ANNOTATION: "ClusterSet"}}})  # fmt: skip
        await _until_kubectl(west_d.url, "llama", "True/Exported")
        east_d.patch(R.INFERENCE_POOL, "llama", "default",
                     {"metadata": {"annotations": {EXPORT_ANNOTATION: None}}})  # fmt: skip
        await _until_kubectl(east_d.url, "llama", "/")
        assert east_d.get(R.INFERENCE_POOL, "llama", "default")["status"]["parents"] == [gateway_parent]
        await _until(lambda: _exporters(hub_d, "llama") == ["west"])
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


# -- the followed import's own parents[], read back with the real kubectl ---------------------------------

_IMPORT_CRD = (
    Path(__file__).resolve().parents[2]
    / "deploy/crds/inferencepoolimports.inference.networking.x-k8s.io.yaml"
)


def _import_schema() -> dict[str, Any]:
    crd = yaml.safe_load(_IMPORT_CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return crdrules.closed(schema)  # a field the schema does not list fails (a real server prunes it)


async def _parent_condition(server: str, ctype: str) -> str:
    """status/reason of a condition in our parent entry of the llama import, as kubectl prints them."""
    cond = f'.status.controllers[?(@.name=="{CONTROLLER_NAME}")].parents[0].conditions[?(@.type=="{ctype}")]'
    path = f"{{{cond}.status}}/{{{cond}.reason}}"
    return await _kubectl(server, "get", "inferencepoolimports.inference.networking.x-k8s.io", "llama",
                          "-o", f"jsonpath={path}")  # fmt: skip


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_the_followed_import_carries_its_parent_status(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    import jsonschema

    hub_d, east_d, west_d = doubles
    # Another import controller manages the same import: its controllers[] entry must survive our writes.
    other = {"name": "example.net/import-controller", "exportingClusters": [{"name": "far"}],
             "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}  # fmt: skip
    hub_d.create({"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferencePoolImport",
                  "metadata": {"name": "llama", "namespace": "default"}})  # fmt: skip
    hub_d.patch(
        R.INFERENCE_POOL_IMPORT, "llama", "default", {"status": {"controllers": [other]}}, status=True
    )
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    west_d.create(_pool("llama", exported=True))  # exported, but with no address kvgate can use
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    parent = ParentRef("gateways", "global")
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           follow=("default", "llama"), parent=parent)  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"])
        assert await _parent_condition(hub_d.url, "Accepted") == "True/Accepted"
        assert await _parent_condition(hub_d.url, "ResolvedRefs") == "False/InvalidExtensionRef"
        imp = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")
        jsonschema.Draft7Validator(_import_schema()).validate(imp)  # the field names are GIE's
        ours = next(c for c in imp["status"]["controllers"] if c["name"] == CONTROLLER_NAME)
        [entry] = ours["parents"]
        assert entry["parentRef"] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                      "namespace": "gateways", "name": "global"}  # fmt: skip
        assert entry["controllerName"] == CONTROLLER_NAME
        resolved = next(c for c in entry["conditions"] if c["type"] == "ResolvedRefs")
        assert "west" in resolved["message"] and "east" not in resolved["message"]
        assert other in imp["status"]["controllers"]  # the other controller's entry, untouched

        # west's pool gets an address: ResolvedRefs turns True (the exporters did not change).
        west_d.patch(R.INFERENCE_POOL, "llama", "default",
                     {"metadata": {"annotations": {"kvgate.io/gateway": "10.2.0.2:8080"}}})  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (got := await _parent_condition(hub_d.url, "ResolvedRefs")) != "True/ResolvedRefs":
            assert loop.time() < deadline, got
            await asyncio.sleep(0.1)
        imp = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")
        jsonschema.Draft7Validator(_import_schema()).validate(imp)
        assert other in imp["status"]["controllers"]
    finally:
        await ctl.stop()
    # Stopped: the parent entry stays (it stands for the global gateway, which other replicas or a
    # standalone controller may still be; it goes with the import), and so does the rest.
    try:
        assert await _parent_condition(hub_d.url, "Accepted") == "True/Accepted"
        imp = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")
        ours = next(c for c in imp["status"]["controllers"] if c["name"] == CONTROLLER_NAME)
        assert len(ours["parents"]) == 1 and [c["name"] for c in ours["exportingClusters"]] == [
            "east",
            "west",
        ]
        assert other in imp["status"]["controllers"]
    finally:
        for c in clients:
            await c.close()


# -- a new controller (a new leader, a restart) reconciles what the hub holds ------------------------------


def _import_with(name: str, entries: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    obj = {"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferencePoolImport",
           "metadata": {"name": name, "namespace": "default"}}  # fmt: skip
    return obj, {"status": {"controllers": entries}}


def _entry(controller: str, *clusters: str) -> dict[str, Any]:
    return {"name": controller, "exportingClusters": [{"name": c} for c in clusters],
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}  # fmt: skip


async def test_a_new_controller_reconciles_the_imports_an_earlier_one_left(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """Imports written by an earlier controller (a previous leader, before a restart) are read back from
    the hub: one nothing exports any more is deleted, though this process never wrote it; one a member
    not seen yet (its pools refused: 403) still exports keeps that member until it is seen; another
    controller's import is left alone."""
    hub_d, east_d, west_d = doubles
    for name, entries in [("old", [_entry(CONTROLLER_NAME, "east")]),
                          ("kept", [_entry(CONTROLLER_NAME, "west")]),
                          ("llama", [_entry(CONTROLLER_NAME, "east", "west")]),
                          ("foreign", [_entry("example.net/import-controller", "far")]),
                          ("shared", [_entry("example.net/import-controller", "far"),
                                      _entry(CONTROLLER_NAME, "east")])]:  # fmt: skip
        obj, status = _import_with(name, entries)
        hub_d.create(obj)
        hub_d.patch(R.INFERENCE_POOL_IMPORT, name, "default", status, status=True)
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    east_d.create(_pool("old", exported=False))  # it stopped exporting while no controller ran
    west_d.forbid(R.INFERENCE_POOL)  # west cannot be seen (yet)
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])])
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "old") is None)  # deleted
        # Nothing exports "shared" here either, but another controller has an entry: only ours goes.
        await _until(lambda: _exporters(hub_d, "shared") == [])
        assert hub_d.get(R.INFERENCE_POOL_IMPORT, "shared", "default")["status"]["controllers"] == [
            _entry("example.net/import-controller", "far")]  # fmt: skip
        assert _exporters(hub_d, "kept") == ["west"] and _exporters(hub_d, "llama") == ["east", "west"]
        assert hub_d.get(R.INFERENCE_POOL_IMPORT, "foreign", "default")["status"]["controllers"] == [
            _entry("example.net/import-controller", "far")]  # fmt: skip
        # west is seen (exporting nothing): what the hub held for it goes.
        west_d.forbid(R.INFERENCE_POOL, False)
        await _until(lambda: _exporters(hub_d, "kept") is None)
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        assert _exporters(hub_d, "foreign") == []  # (ours: none) still there
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


# -- review fixes: a resync that events cannot put off, another install's imports, a refusing hub -------


async def test_the_resync_happens_though_pool_events_come_more_often(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """The hub's imports are read back every ``resync_s`` even while a member's pools change more often
    than that: an import removed behind the controller's back is written again."""
    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    east_d.create(_pool("busy", exported=False))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])], resync_s=1.0)
    await ctl.start()
    stop = asyncio.Event()

    async def churn() -> None:  # an event every 0.1 s, far more often than resync_s
        i = 0
        while not stop.is_set():
            i += 1
            east_d.patch(R.INFERENCE_POOL, "busy", "default", {"metadata": {"labels": {"n": str(i)}}})
            await asyncio.sleep(0.1)

    churner = asyncio.create_task(churn())
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        hub_d.delete(R.INFERENCE_POOL_IMPORT, "llama", "default")  # another writer removed it
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
    finally:
        stop.set()
        await churner
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_imports_of_another_install_on_the_same_hub_are_left_alone(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """Another kvgate install (members north, ...) writes the same hub under the same controller name:
    its import, exported by a cluster that is not this controller's member, is neither deleted nor
    rewritten; an import both export keeps the other install's exporter next to ours."""
    hub_d, east_d, west_d = doubles
    for name, ns, clusters in [("theirs", "team-b", ["north"]), ("both", "default", ["north"])]:
        obj, status = _import_with(name, [_entry(CONTROLLER_NAME, *clusters)])
        obj["metadata"]["namespace"] = ns
        hub_d.create(obj)
        hub_d.patch(R.INFERENCE_POOL_IMPORT, name, ns, status, status=True)
    east_d.create(_pool("both", exported=True, gateway="10.1.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])], resync_s=0.5)
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "both") == ["east", "north"])
        passes = ctl.reconciles
        await _until(lambda: ctl.reconciles >= passes + 3)  # a few resyncs (a fixed 1.5 s before, tst32)
        theirs = hub_d.get(R.INFERENCE_POOL_IMPORT, "theirs", "team-b")
        assert theirs["status"]["controllers"] == [_entry(CONTROLLER_NAME, "north")]
        # east stops exporting: only east goes; north's entry stays and so does the import.
        east_d.delete(R.INFERENCE_POOL, "both", "default")
        await _until(lambda: _exporters(hub_d, "both") == ["north"])
        assert ctl.error is None
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_a_refusing_hub_does_not_keep_the_clusters_from_the_gateway(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub refuses everything on imports (RBAC without ``list``, say): the gateway still gets its
    clusters from the members' pools, the problem says why, and the retries back off.

    Its waits hold on a loaded machine: the hub fails from the first reconcile, so the longer the members
    take to sync, the longer the backoff the recovery waits out (up to ``RETRY_MAX_S``, 30 s, which a 40 s
    wait did not always cover); capped here at 4 s, and each wait is as long as that pause allows."""
    monkeypatch.setattr(imports, "RETRY_MAX_S", 4.0)  # pauses 0.5, 1, 2, 4, 4, ... s
    hub_d, east_d, west_d = doubles
    hub_d.forbid(R.INFERENCE_POOL_IMPORT)
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    west_d.create(_pool("llama", exported=True, gateway="10.2.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    fed: list[ClustersConfig] = []
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           follow=("default", "llama"), on_clusters=fed.append)  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: bool(fed) and [c.name for c in fed[-1].clusters] == ["east", "west"], 60.0)
        await _until(lambda: (ctl.problem() or "").startswith("hub:"), 60.0)
        assert "forbidden" in (ctl.problem() or "")
        first = ctl.reconciles
        await asyncio.sleep(4.0)  # backing off 0.5, 1, 2, 4 s: a handful of tries, not one each 0.5 s
        assert ctl.reconciles - first <= 4, ctl.reconciles - first
        hub_d.forbid(R.INFERENCE_POOL_IMPORT, False)
        await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"], 60.0)  # one pause (<= 4 s) on
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


def test_the_retry_pause_is_capped_however_many_failures() -> None:
    """Hours of a refusing hub (thousands of failures in a row) give the cap, not an OverflowError that
    would end the reconcile loop."""
    assert retry_pause(1) == 0.5 and retry_pause(2) == 1.0
    for n in (7, 1024, 1025, 5000, 10**6):
        assert retry_pause(n) == RETRY_MAX_S


async def test_member_changes_reach_the_gateway_during_the_hub_backoff(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub refuses and the controller backs off for long (300 s): a member's pool deleted meanwhile
    still reaches the gateway's clusters at once, not after the backoff."""
    # (300 s: well past the 30 s the test gives each change to arrive, on a loaded machine; 30 s and 5 s
    # before)
    monkeypatch.setattr(imports, "RETRY_FIRST_S", 300.0)
    monkeypatch.setattr(imports, "RETRY_MAX_S", 300.0)
    hub_d, east_d, west_d = doubles
    hub_d.forbid(R.INFERENCE_POOL_IMPORT)
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    west_d.create(_pool("llama", exported=True, gateway="10.2.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    fed: list[ClustersConfig] = []
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           follow=("default", "llama"), on_clusters=fed.append)  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: bool(fed) and [c.name for c in fed[-1].clusters] == ["east", "west"])
        # The loop is in its 300 s backoff now: ``_loop`` sets the error and backs off with no await
        # between (a 0.5 s pause here before, tst32).
        await _until(lambda: (ctl.problem() or "").startswith("hub:"))
        west_d.delete(R.INFERENCE_POOL, "llama", "default")
        await _until(lambda: [c.name for c in fed[-1].clusters] == ["east"])
        east_d.patch(R.INFERENCE_POOL, "llama", "default",
                     {"metadata": {"annotations": {"kvgate.io/gateway": "10.1.0.9:8080"}}})  # fmt: skip
        await _until(lambda: "10.1.0.9:8080" in repr(fed[-1].clusters))
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_the_gateway_gets_its_clusters_and_says_the_hub_problem_while_the_hub_refuses(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], tmp_path: Any
) -> None:
    """``kvgate serve --clusters`` with ``controller: true`` and a hub refusing the imports: the router
    still gets the members' clusters, and /readyz, ready as the router is, says the hub's refusal."""
    import aiohttp

    from kvgate.multicluster.clusters import load
    from kvgate.multicluster.serve import GlobalGateway

    hub_d, east_d, west_d = doubles
    hub_d.forbid(R.INFERENCE_POOL_IMPORT)
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    f = tmp_path / "clusters.yaml"
    f.write_text(
        f"kubernetes:\n  server: {hub_d.url}\n  import: default/llama\n  members:\n"
        f"  - {{name: east, server: '{east_d.url}'}}\n  - {{name: west, server: '{west_d.url}'}}\n"
    )
    gw = GlobalGateway(load(f), "kvgate", seed=0)
    port = await gw.start("127.0.0.1", 0)
    try:
        await _until(lambda: list(gw.router.states) == ["east"])
        async with aiohttp.ClientSession() as http:
            body = ""
            end = asyncio.get_running_loop().time() + 30.0
            while (
                asyncio.get_running_loop().time() < end
            ):  # the refusal shows once the first reconcile failed
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    body = await r.text()
                if "forbidden" in body:
                    break
                await asyncio.sleep(0.1)
            assert r.status == 200 and body.startswith("ready; import controller: hub: 403"), body
    finally:
        await gw.stop()


async def test_the_gateway_is_not_ready_while_the_hub_refuses_and_no_member_answers(tmp_path: Any) -> None:
    """``kvgate serve --clusters`` with a hub refusing the imports and every member's API server down: no
    cluster, so /readyz is 503, naming the unreachable member (the loop still runs: /healthz 200); the
    member's API server back (same address, its pool exported): ready again, the hub problem still said."""
    import aiohttp

    from kvgate.multicluster.clusters import load
    from kvgate.multicluster.serve import GlobalGateway

    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as gone,
    ):
        hub_d.forbid(R.INFERENCE_POOL_IMPORT)
        east_url, east_port = gone.url, gone.port
        await gone.stop()  # down: connections to it are refused
        f = tmp_path / "clusters.yaml"
        f.write_text(f"kubernetes:\n  server: {hub_d.url}\n  import: default/llama\n  members:\n"
                     f"  - {{name: east, server: '{east_url}'}}\n")  # fmt: skip
        gw = GlobalGateway(load(f), "kvgate", seed=0)
        port = await gw.start("127.0.0.1", 0)
        east_d = None
        try:
            async with aiohttp.ClientSession() as http:

                async def get(path: str) -> tuple[int, str]:
                    async with http.get(f"http://127.0.0.1:{port}{path}") as r:
                        return r.status, await r.text()

                async def readyz_says(status: int, text: str) -> None:
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 30.0
                    while (got := await get("/readyz"))[0] != status or text not in got[1]:
                        assert loop.time() < deadline, got
                        await asyncio.sleep(0.1)

                await readyz_says(503, "no cluster ready; import controller: member east: connection to")
                assert (await get("/healthz"))[0] == 200
                east_d = ApiServerDouble(bookmark_interval=0.2)
                await east_d.start(port=east_port)
                east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
                await _until(lambda: list(gw.router.states) == ["east"], 30.0)
                await readyz_says(200, "ready; import controller: hub: 403")
        finally:
            await gw.stop()
            if east_d is not None:
                await east_d.stop()


# -- leadership: no write sent once a replica stopped leading; a late write corrected at the read-back ---


async def test_a_replica_that_no_longer_leads_sends_no_write(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], caplog: pytest.LogCaptureFixture
) -> None:
    """``leading`` is asked before every write: once it says no, a member's change reaches neither the hub
    nor the member's Exported condition (the doubles see no write at all); the pass just ends (review
    s8-k8s R3: no hub failure, no back-off, no warning); leading again, the change is written."""
    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    lead = [True]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           leading=lambda: lead[0])  # fmt: skip
    await ctl.start()

    def writes() -> list[str]:
        return [r for d in (hub_d, east_d, west_d) for r in d.requests if not r.startswith("GET ")]

    def marked(pool: dict[str, Any]) -> bool:  # our Exported condition on the pool
        return any(
            p.get("controllerName") == CONTROLLER_NAME for p in pool.get("status", {}).get("parents", [])
        )

    def east_marked() -> bool:  # the last write of the first pass: east's Exported condition
        return marked(east_d.get(R.INFERENCE_POOL, "llama", "default"))

    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"] and east_marked())
        # That write's own event reached the controller (nothing more to write; a fixed 1 s before, tst32).
        own = ("east", ("default", "llama"))
        await _until(lambda: own in ctl.pools and marked(ctl.pools[own]))
        before, ended = len(writes()), ctl.stepped_down
        caplog.clear()
        caplog.set_level(logging.INFO, "kvgate.multicluster.imports")
        lead[0] = False
        west_d.create(_pool("llama", exported=True, gateway="10.2.0.2:8080"))
        await _until(lambda: ctl.stepped_down > ended)
        await asyncio.sleep(1.0)
        # (creating west's pool through the double is no request; the controller's would be)
        assert len(writes()) == before, writes()[before:]
        assert _exporters(hub_d, "llama") == ["east"]
        assert ctl.error is None and ctl.problem() is None
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        lead[0] = True
        await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"])
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


def _export(member: ApiServerDouble, value: str | None) -> None:
    patch = {"metadata": {"annotations": {EXPORT_ANNOTATION: value}}}
    member.patch(R.INFERENCE_POOL, "llama", "default", patch)


class _SlowHub(KubeClient):
    """The hub as a slow API server applies a request: ``before`` (once, for the first request of that
    method) runs just before it, i.e. what lands in the hub between the controller's read and its write."""

    before: dict[str, Callable[[], None]]

    async def request(self, method: str, path: str, *args: Any, **kw: Any) -> dict[str, Any]:
        hook = self.before.pop(method, None)
        if hook is not None:
            hook()
        return await super().request(method, path, *args, **kw)


async def _slow_hub(d: ApiServerDouble) -> _SlowHub:
    hub = _SlowHub(await load_configuration(server=d.url))
    hub.before = {}
    return hub


async def test_a_late_delete_of_a_previous_leader_does_not_remove_what_the_new_leader_wrote(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """The old leader read the import (nothing exports it any more), then stepped down; its DELETE reaches
    the API server after the new leader rewrote the import (east exports again). The DELETE carries the
    resourceVersion read as its precondition: refused (409), and decided again on a fresh read, where this
    replica no longer leads and sends nothing. The new leader's import stands."""
    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    hub = await _slow_hub(hub_d)
    clients = [hub, *[await KubeClient.connect(server=d.url) for d in (east_d, west_d)]]
    lead = [True]
    ctl = ImportController(hub, [Member("east", clients[1]), Member("west", clients[2])],
                           leading=lambda: lead[0])  # fmt: skip
    await ctl.start()
    new_leader = _entry(CONTROLLER_NAME, "east")

    def stepped_down_and_the_new_leader_wrote() -> None:
        lead[0] = False
        hub_d.patch(R.INFERENCE_POOL_IMPORT, "llama", "default", {"status": {"controllers": [new_leader]}},
                    status=True)  # fmt: skip

    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        hub.before["DELETE"] = stepped_down_and_the_new_leader_wrote
        _export(east_d, None)
        await _until(lambda: "DELETE" not in hub.before and ctl.stepped_down > 0)
        obj = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")  # not deleted
        assert obj["status"]["controllers"] == [new_leader]
        assert any(r.startswith("DELETE ") for r in hub_d.requests)  # it was sent, and refused
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_a_late_status_write_of_a_previous_leader_is_corrected_at_the_next_read_back(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """A write nothing fences (sent by a leader that has since stepped down, applied late by the API
    server) lands after this controller read the hub back: its stale exporters stand until the next
    read-back (``resync_s``), which rewrites them; an import deleted so is written again."""
    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])], resync_s=1.0)
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        # The old leader's late write: west (a member, seen, exporting nothing) listed as an exporter.
        stale = {"status": {"controllers": [_entry(CONTROLLER_NAME, "east", "west")]}}
        hub_d.patch(R.INFERENCE_POOL_IMPORT, "llama", "default", stale, status=True)
        assert _exporters(hub_d, "llama") == ["east", "west"]
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        hub_d.delete(R.INFERENCE_POOL_IMPORT, "llama", "default")  # a late delete that matched
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_an_import_created_whose_entry_was_never_written_is_not_left_behind(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """The import is created (POST) but its status write is refused (here a 403: the hub's RBAC changed
    in between); the pool stops being exported before a retry. The import has no kvgate entry, only
    kvgate's managed-by label: a controller reading the hub back (the next leader, a restart) takes it as
    its own and deletes it, as does the writer itself while it runs."""
    hub_d, east_d, west_d = doubles
    hub = await _slow_hub(hub_d)
    clients = [hub, *[await KubeClient.connect(server=d.url) for d in (east_d, west_d)]]
    members = [Member("east", clients[1]), Member("west", clients[2])]
    old = ImportController(hub, members)
    hub.before["PATCH"] = lambda: hub_d.forbid(R.INFERENCE_POOL_IMPORT)
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    await old.start()
    try:
        await _until(lambda: "403" in (old.problem() or ""))
        assert _exporters(hub_d, "llama") == []  # created, no entry
        await old.stop()
        hub_d.forbid(R.INFERENCE_POOL_IMPORT, False)
        _export(east_d, None)
        new = ImportController(hub, members)  # the next leader
        await new.start()
        try:
            await _until(lambda: _exporters(hub_d, "llama") is None)  # deleted
        finally:
            await new.stop()
        # The writer itself, still running when its PATCH is refused and the export goes.
        _export(east_d, "ClusterSet")
        hub.before["PATCH"] = lambda: hub_d.forbid(R.INFERENCE_POOL_IMPORT)
        same = ImportController(hub, members, resync_s=3600.0)  # (no read-back meanwhile)
        await same.start()
        try:
            await _until(lambda: "403" in (same.problem() or ""))
            assert _exporters(hub_d, "llama") == []
            _export(east_d, None)
            # The pool's event reached the controller (a fixed 0.5 s before, tst32).
            await _until(lambda: ("default", "llama") not in same.exported)
            hub_d.forbid(R.INFERENCE_POOL_IMPORT, False)
            await _until(lambda: _exporters(hub_d, "llama") is None)
        finally:
            await same.stop()
    finally:
        await old.stop()
        for c in clients:
            await c.close()


# -- what the read-back takes for its own: this install's imports, not hand copies nor another install's --


def _lists(hub_d: ApiServerDouble) -> int:
    """How many times the hub's imports were listed (each read-back lists them once)."""
    return sum(1 for r in hub_d.requests if r.startswith("GET ") and r.split("?")[0].endswith(
        "/apis/inference.networking.x-k8s.io/v1alpha1/inferencepoolimports"))  # fmt: skip


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_the_read_back_takes_only_the_imports_this_install_created(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], tmp_path: Path
) -> None:
    """An import this controller created carries kvgate's managed-by label; one left without its entry
    (its status write refused) is taken back and deleted once nothing exports it. A copy of such an
    import made by hand with kubectl (another name, the label with it), another install's label-only
    import (another parent), are not this controller's: they are not deleted at the read-back. An import
    whose kvgate entry went while another controller's stays is not read again at every resync."""
    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    members = [Member("east", clients[1]), Member("west", clients[2])]
    parent = ParentRef("gateways", "global")
    ctl = ImportController(clients[0], members, follow=("default", "llama"), parent=parent, resync_s=0.3)
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        # A user copies the import by hand to another name (a real API server drops the status a create
        # sends for a resource with a status subresource; the double keeps it, so it goes here).
        text = await _kubectl(hub_d.url, "get", "inferencepoolimports.inference.networking.x-k8s.io",
                              "llama", "-o", "yaml")  # fmt: skip
        copy = yaml.safe_load(text)
        assert copy["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kvgate"}
        copy.pop("status", None)
        kept = ("labels", "annotations", "namespace")
        copy["metadata"] = {k: v for k, v in copy["metadata"].items() if k in kept} | {"name": "llama-copy"}
        (tmp_path / "copy.yaml").write_text(yaml.safe_dump(copy))
        await _kubectl(hub_d.url, "create", "-f", str(tmp_path / "copy.yaml"))
        # Left by this install's controller between its create and its status write, by another
        # install's (another parent) alike, and one whose kvgate entry went while another controller's
        # stayed (it still has the label this controller created it with).
        stale = _import_with("stale", [])[0]
        theirs = _import_with("theirs", [])[0]
        shared, shared_status = _import_with("shared", [_entry("example.net/import-controller", "far")])
        installs = ((stale, "gateways/global"), (theirs, "team-b/global"), (shared, "gateways/global"))
        for obj, install in installs:
            name = obj["metadata"]["name"]
            obj["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "kvgate"}
            obj["metadata"]["annotations"] = {
                imports.CREATED_FOR: f"default/{name} for gateway.networking.k8s.io/Gateway/{install}"
            }
            hub_d.create(obj)
        hub_d.patch(R.INFERENCE_POOL_IMPORT, "shared", "default", shared_status, status=True)
        await _until(lambda: _exporters(hub_d, "stale") is None)  # this install's: taken back, deleted
        seen = _lists(hub_d)
        await _until(lambda: _lists(hub_d) >= seen + 3)  # three more read-backs
        names = {o["metadata"]["name"] for o in hub_d.objects(R.INFERENCE_POOL_IMPORT, "default")}
        assert names == {"llama", "llama-copy", "theirs", "shared"}
        assert not any(r.split("?")[0].endswith("/inferencepoolimports/shared") for r in hub_d.requests)
        assert _exporters(hub_d, "llama") == ["east"] and ctl.error is None
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


# -- ResolvedRefs for gateways that route in Parent mode only (the hub EPP) -------------------------------


def _epp_only_pool() -> dict[str, Any]:
    """west's pool: exported with its EPP's address only (``kvgate.io/epp``), no cluster gateway."""
    pool = inference_pool("llama", None, exported=True)
    pool["metadata"]["annotations"]["kvgate.io/epp"] = "10.2.0.3:9002"
    return pool


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("door", ["hub-epp", "hub-controller"])
async def test_resolved_refs_of_a_parent_mode_only_gateway_needs_each_exporters_gateway(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], tmp_path: Path, door: str
) -> None:
    """The hub EPP (``kvgate epp --clusters``) can send a request only to a cluster's gateway: an exporter
    whose pool names only its EPP (``kvgate.io/epp``) is one it cannot use, so the followed import's
    ``ResolvedRefs`` is False / ``InvalidExtensionRef`` naming it (it said True: an EPP address resolved it
    for ``kvgate serve``), True once that pool names a gateway. A standalone ``kvgate hub-controller``
    writing for hub EPPs says the same with the file's ``kubernetes.parent_mode_only: true``."""
    from kvgate.multicluster.clusters import load
    from kvgate.multicluster.hub import ClusterDirector, HubFeed
    from kvgate.multicluster.hub_controller import HubController

    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    west_d.create(_epp_only_pool())
    f = tmp_path / "clusters.yaml"
    f.write_text(
        f"kubernetes:\n  server: {hub_d.url}\n  import: default/llama\n  parent: gateways/global\n"
        + ("  parent_mode_only: true\n" if door == "hub-controller" else "")
        + f"  members:\n  - {{name: east, server: '{east_d.url}'}}\n"
        + f"  - {{name: west, server: '{west_d.url}'}}\n"
    )
    cfg = load(f)
    running: Any
    if door == "hub-epp":
        director = ClusterDirector(cfg, "kvgate", seed=0)
        running = HubFeed(director)
    else:
        assert cfg.kubernetes is not None
        running = HubController(cfg.kubernetes)
    await running.start()

    async def resolved_refs(want: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (got := await _parent_condition(hub_d.url, "ResolvedRefs")) != want:
            assert loop.time() < deadline, got
            await asyncio.sleep(0.1)

    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"])
        await resolved_refs("False/InvalidExtensionRef")
        imp = hub_d.get(R.INFERENCE_POOL_IMPORT, "llama", "default")
        ours = next(c for c in imp["status"]["controllers"] if c["name"] == CONTROLLER_NAME)
        resolved = next(c for c in ours["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
        assert "west" in resolved["message"] and "east" not in resolved["message"], resolved
        if door == "hub-epp":
            assert list(director.states) == ["east"]  # (west cannot be sent to from the hub EPP)
        west_d.patch(R.INFERENCE_POOL, "llama", "default",
                     {"metadata": {"annotations": {"kvgate.io/gateway": "10.2.0.2:8080"}}})  # fmt: skip
        await resolved_refs("True/ResolvedRefs")
        if door == "hub-epp":
            await _until(lambda: list(director.states) == ["east", "west"])
    finally:
        await running.stop()


# -- one writer: gateways with controller: true and kvgate hub-controller compete for one Lease -----------


async def test_a_gateway_running_the_controller_beside_a_standalone_one_writes_only_once_it_leads(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], tmp_path: Path, monkeypatch: Any
) -> None:
    """A gateway left at ``controller: true`` beside a leading ``kvgate hub-controller`` (same clusters
    file): both compete for the writers' Lease (``kubernetes.lease``), so the gateway is a standby that
    routes to what the members export and sends no write at all (only its Lease's), and says no problem;
    the standalone controller stopped (its Lease released), the gateway leads and writes the next change.
    (Before, both wrote every change: two writers racing on resourceVersions.)"""
    from kvgate.multicluster.clusters import load
    from kvgate.multicluster.hub_controller import Election, HubController
    from kvgate.multicluster.serve import GlobalGateway

    hub_d, east_d, west_d = doubles
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    f = tmp_path / "clusters.yaml"
    f.write_text(
        f"kubernetes:\n  server: {hub_d.url}\n  import: default/llama\n  lease: ops/writers\n"
        f"  members:\n  - {{name: east, server: '{east_d.url}'}}\n"
        f"  - {{name: west, server: '{west_d.url}'}}\n"
    )
    cfg = load(f)
    assert cfg.kubernetes is not None
    sent: list[tuple[int, str, str]] = []
    request = KubeClient.request

    async def recording(self: KubeClient, method: str, path: str, *args: Any, **kw: Any) -> Any:
        sent.append((id(self), method, path))
        return await request(self, method, path, *args, **kw)

    monkeypatch.setattr(KubeClient, "request", recording)
    hc = HubController(cfg.kubernetes, Election(retry_period_s=0.1, lease_duration_s=2, renew_deadline_s=1))
    await hc.start()
    gw: GlobalGateway | None = None
    try:
        await _until(lambda: hc.controller is not None and _exporters(hub_d, "llama") == ["east"])
        assert hub_d.get(R.LEASE, "writers", "ops")["spec"]["holderIdentity"] == hc.elector.identity  # type: ignore[union-attr]
        gw = GlobalGateway(load(f), "kvgate", seed=0)
        await gw.start("127.0.0.1", 0)
        mine = {id(c) for c in gw.source._clients}

        def gateway_writes() -> list[tuple[str, str]]:
            return [(m, p) for c, m, p in sent if c in mine and m != "GET" and "/leases/" not in p]

        await _until(lambda: list(gw.router.states) == ["east"])  # type: ignore[union-attr]
        west_d.create(_pool("llama", exported=True, gateway="10.2.0.2:8080"))
        await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"])
        await _until(lambda: list(gw.router.states) == ["east", "west"])  # type: ignore[union-attr]
        assert await _exported(west_d.url, "llama") == "True/Exported"  # (written by the standalone one)
        assert gateway_writes() == []
        await _until(lambda: any(c in mine and "/leases/" in p for c, _m, p in sent))  # it competes
        assert gateway_writes() == [] and gw.source.problem() is None
        # The standalone controller goes (its Lease released): the gateway leads and writes.
        await _stopped(hc.stop(), "the standalone hub controller")
        east_d.patch(R.INFERENCE_POOL, "llama", "default",
                     {"metadata": {"annotations": {EXPORT_ANNOTATION: None}}})  # fmt: skip
        await _until(lambda: _exporters(hub_d, "llama") == ["west"])
        assert gateway_writes() and gw.source.elector is not None and gw.source.elector.leads()
    finally:
        await _stopped(hc.stop(), "the standalone hub controller")
        if gw is not None:
            await _stopped(gw.stop(), "the gateway")


async def test_a_gateway_refused_the_lease_still_writes_and_says_so(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], tmp_path: Path
) -> None:
    """A gateway at ``controller: true`` whose ServiceAccount may not use the writers' Lease (403: an
    older chart's RBAC) writes the imports as it did before there was a Lease, rather than not at all, and
    ``/readyz``'s text says so; the Lease allowed, it competes for it as the others do."""
    import aiohttp

    from kvgate.multicluster.clusters import load
    from kvgate.multicluster.serve import GlobalGateway

    hub_d, east_d, west_d = doubles
    hub_d.forbid(R.LEASE)
    east_d.create(_pool("llama", exported=True, gateway="10.1.0.2:8080"))
    f = tmp_path / "clusters.yaml"
    f.write_text(
        f"kubernetes:\n  server: {hub_d.url}\n  import: default/llama\n  members:\n"
        f"  - {{name: east, server: '{east_d.url}'}}\n  - {{name: west, server: '{west_d.url}'}}\n"
    )
    gw = GlobalGateway(load(f), "kvgate", seed=0)
    port = await gw.start("127.0.0.1", 0)
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        # Written: the gateway was fed east first, so it is ready from now on. Its text names the first
        # problem it has: "member west: not synced yet" until west's pools are listed (the hub is
        # written without waiting for every member), then the refused Lease.
        said = "lease default/kvgate-hub-controller (writing without it): KubeError: 403"
        body = ""
        async with aiohttp.ClientSession() as http:
            end = asyncio.get_running_loop().time() + 30.0
            while asyncio.get_running_loop().time() < end:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    body = await r.text()
                    assert r.status == 200, body
                if said in body or "member west: not synced yet" not in body:
                    break
                await asyncio.sleep(0.05)
        assert said in body, body
        hub_d.forbid(R.LEASE, False)
        await _until(lambda: gw.source.elector is not None and gw.source.elector.leads())
        assert hub_d.get(R.LEASE, "kvgate-hub-controller", "default")["spec"]["holderIdentity"]
        assert gw.source.problem() is None
    finally:
        await gw.stop()
