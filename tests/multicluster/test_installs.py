"""Two kvgate installs on one hub (review s8-k8s B1-B4, R1, R2; each failed on main e0e79c1): each install
has its own writers' Lease, another install's import and exporters are not dropped, an empty address
annotation is no address, a label-only import with no ``kvgate.io/created-for`` is named in the log,
``kvgate serve`` refuses ``parent_mode_only``. (R3, a step-down during a pass is no hub failure:
test_imports.py, test_hub_controller.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.multicluster import imports
from kvgate.multicluster.clusters import (
    DEFAULT_LEASE,
    ClustersConfig,
    ClustersError,
    ClustersFile,
    ClusterSpec,
    ParentRef,
    load,
    parse,
)
from kvgate.multicluster.hub import ClusterDirector
from kvgate.multicluster.imports import CONTROLLER_NAME, EXPORT_ANNOTATION, ImportController, Member
from kvgate.multicluster.source import ClusterSource

from .kube_objects import exporters as _exporters
from .kube_objects import inference_pool

B = "gateway.networking.k8s.io/Gateway/team-b/global"  # install B's identity (its parent)


async def _until(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.fixture
async def doubles() -> AsyncIterator[tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble]]:
    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub,
        ApiServerDouble(bookmark_interval=0.2) as east,
        ApiServerDouble(bookmark_interval=0.2) as west,
    ):
        yield hub, east, west


def _their_import(name: str, install: str, *clusters: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An import another install (parent ``install``) created and wrote, as this code writes one."""
    obj = {"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferencePoolImport",
           "metadata": {"name": name, "namespace": "default",
                        "labels": {"app.kubernetes.io/managed-by": "kvgate"},
                        "annotations": {imports.CREATED_FOR: f"default/{name} for {install}"}}}  # fmt: skip
    entry = {"name": CONTROLLER_NAME, "exportingClusters": [{"name": c} for c in clusters],
             "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}  # fmt: skip
    return obj, {"status": {"controllers": [entry]}}


def _put(hub: ApiServerDouble, obj: dict[str, Any], status: dict[str, Any]) -> None:
    hub.create(obj)
    hub.patch(R.INFERENCE_POOL_IMPORT, obj["metadata"]["name"], "default", status, status=True)


# -- B1: the default writers' Lease is the install's ----------------------------------------------------


def test_the_default_lease_is_one_per_install() -> None:
    """Replicas of one install (one parent) share a Lease; installs with other parents do not, even when
    the parents differ only in namespace; the default parent keeps the plain name; a file's ``lease``
    wins; the name is a valid object name of at most 63 characters."""
    from kvgate.multicluster.clusters import default_lease  # (new with this fix)

    def lease(parent: str | None, lease: str | None = None) -> tuple[str, str]:
        doc: dict[str, Any] = {"import": "default/llama", "members": [{"name": "east", "server": "x"}]}
        if parent is not None:
            doc["parent"] = parent
        if lease is not None:
            doc["lease"] = lease
        kube = parse({"kubernetes": doc}).kubernetes
        assert kube is not None
        return kube.lease_ref

    assert lease(None) == ("default", DEFAULT_LEASE)
    assert lease("default/kvgate-global") == ("default", DEFAULT_LEASE)
    a, b, a_elsewhere = lease("gateways/a"), lease("gateways/b"), lease("other/a")
    assert len({a, b, a_elsewhere, ("default", DEFAULT_LEASE)}) == 4
    assert a == lease("gateways/a") and a[0] == "default" and a[1].startswith(f"{DEFAULT_LEASE}-a-")
    assert lease("gateways/a", "ops/writers") == ("ops", "writers")
    long = default_lease("default", ParentRef("gateways", "G" * 200 + ".x_y"))
    assert len(long) <= 63 and long.replace("-", "").isalnum() and long == long.lower()


async def test_two_installs_in_one_namespace_each_write_their_own_imports(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], tmp_path: Path
) -> None:
    """Two ``kvgate serve --clusters``-style installs on one hub at the default ``controller: true``, no
    ``lease`` in either file: A (member east, follows default/llama, parent gateways/a) and B (member
    north, follows default/mistral, parent gateways/b). With one Lease for both (the import's namespace
    only) A held it and B stayed a standby for good: B's exported pool was never imported."""
    hub_d, east_d, west_d = doubles
    east_d.create(inference_pool("llama", "10.1.0.2:8080"))
    west_d.create(inference_pool("mistral", "10.2.0.2:8080"))
    files = {}
    for install, member, server, imp in (("a", "east", east_d.url, "llama"),
                                         ("b", "north", west_d.url, "mistral")):  # fmt: skip
        f = tmp_path / f"{install}.yaml"
        f.write_text(
            f"kubernetes:\n  server: {hub_d.url}\n  import: default/{imp}\n  parent: gateways/{install}\n"
            f"  members:\n  - {{name: {member}, server: '{server}'}}\n"
        )
        files[install] = f
    fed: list[ClustersConfig] = []
    a = ClusterSource(load(files["a"]), fed.append)
    b = ClusterSource(load(files["b"]), fed.append)
    await a.start()
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        await b.start()
        await _until(lambda: _exporters(hub_d, "mistral") == ["north"])
        assert a.elector is not None and b.elector is not None
        assert a.elector.name != b.elector.name and a.elector.leads() and b.elector.leads()
    finally:
        await b.stop()
        await a.stop()


# -- B2 / B3: another install's import and exporters ----------------------------------------------------


async def test_another_installs_import_is_not_deleted_when_its_member_names_match_ours(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """Install B (parent team-b/global) calls its clusters east and west too. B's import "mistral",
    exported by B's east, carries B's ``kvgate.io/created-for``. This install's east does not export
    mistral: it used to count "east" as its own seen member exporting nothing and DELETE B's live import
    at every read-back."""
    hub_d, east_d, west_d = doubles
    _put(hub_d, *_their_import("mistral", B, "east"))
    east_d.create(inference_pool("llama", "10.1.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(
        clients[0],
        [Member("east", clients[1]), Member("west", clients[2])],
        follow=("default", "llama"),
        parent=ParentRef("gateways", "global"),
        resync_s=0.3,
    )
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "llama") == ["east"])
        await asyncio.sleep(1.5)  # several read-backs
        assert _exporters(hub_d, "mistral") == ["east"], "install B's live import was deleted"
        assert not any(r.startswith("DELETE") for r in hub_d.requests if "mistral" in r)
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_our_exporter_leaves_another_installs_import_without_deleting_it(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """This install's east exports "mistral", an import install B created (listing B's north): east is
    added beside north. east stops: east goes, north stays. B's north goes too (B's import now lists
    only our east) and east stops: our entry goes, but the import, B's, is not deleted: B takes it back
    at its read-back (no entry, its label and annotation) and decides."""
    hub_d, east_d, west_d = doubles
    _put(hub_d, *_their_import("mistral", B, "north"))
    east_d.create(inference_pool("mistral", "10.1.0.2:8080"))
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           parent=ParentRef("gateways", "global"), resync_s=0.3)  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: _exporters(hub_d, "mistral") == ["east", "north"])
        east_d.delete(R.INFERENCE_POOL, "mistral", "default")
        await _until(lambda: _exporters(hub_d, "mistral") == ["north"])
        # B's north stops exporting: B rewrites its entry (only our east listed), then ours stops too.
        _, status = _their_import("mistral", B, "east")
        hub_d.patch(R.INFERENCE_POOL_IMPORT, "mistral", "default", status, status=True)
        east_d.create(inference_pool("mistral", "10.1.0.2:8080"))
        await asyncio.sleep(0.8)
        east_d.delete(R.INFERENCE_POOL, "mistral", "default")
        await _until(lambda: _exporters(hub_d, "mistral") == [])
        left = hub_d.get(R.INFERENCE_POOL_IMPORT, "mistral", "default")
        assert left["status"]["controllers"] == [] and ctl.error is None
        assert left["metadata"]["annotations"][imports.CREATED_FOR] == f"default/mistral for {B}"
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_a_write_keeps_another_installs_exporter_that_came_after_the_last_read_back(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble],
) -> None:
    """Install B writes import llama (exported by its north) after this controller's last read-back;
    then this install's east exports llama: the POST is a 409, the import is read (B's entry lists
    north), and the status write used to be built from this controller's stale record alone, dropping
    north (the resourceVersion guard cannot help: nothing changed between the read and the write)."""
    hub_d, east_d, west_d = doubles
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           parent=ParentRef("gateways", "global"), resync_s=3600.0)  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: ctl.reconciles > 0 and ctl.problem() is None)  # read back (empty hub)
        _put(hub_d, *_their_import("llama", B, "north"))
        east_d.create(inference_pool("llama", "10.1.0.2:8080"))
        await _until(lambda: "east" in (_exporters(hub_d, "llama") or []))
        assert sorted(_exporters(hub_d, "llama") or []) == ["east", "north"], "B's exporter was dropped"
        assert ctl.written[("default", "llama")] == ("east", "north")
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


def _lists(hub: ApiServerDouble) -> int:
    """How many times the hub's imports were listed (read back)."""
    return sum(r.startswith("GET /apis/") and "/inferencepoolimports?" in r for r in hub.requests)


# -- R1: a label-only import from before kvgate.io/created-for is named in the log ------------------------


async def test_a_label_only_import_without_created_for_is_left_and_named_once_in_the_log(
    doubles: tuple[ApiServerDouble, ApiServerDouble, ApiServerDouble], caplog: pytest.LogCaptureFixture
) -> None:
    """A kvgate from before ``kvgate.io/created-for`` killed between its create and its status write left
    an import with only the managed-by label. It is not taken (it could be a hand copy), so the operator
    must find it: one warning naming it, however many read-backs; imports with the annotation or with
    another controller's entry are not named."""
    hub_d, east_d, west_d = doubles
    old, _ = _their_import("old", B)
    del old["metadata"]["annotations"]
    theirs, _ = _their_import("theirs", B)  # another install's, label-only: its own to take
    hub_d.create(old)
    hub_d.create(theirs)
    caplog.set_level(logging.INFO, "kvgate.multicluster.imports")
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d, west_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1]), Member("west", clients[2])],
                           parent=ParentRef("gateways", "global"), resync_s=0.2)  # fmt: skip
    await ctl.start()
    try:
        await _until(lambda: _lists(hub_d) >= 4)  # several read-backs
        said = [r.getMessage() for r in caplog.records if "created-for" in r.getMessage()]
        assert len(said) == 1 and "default/old" in said[0], said
        names = {o["metadata"]["name"] for o in hub_d.objects(R.INFERENCE_POOL_IMPORT, "default")}
        assert names == {"old", "theirs"}
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


# -- B4: an empty address annotation is no address ------------------------------------------------------


def _pool_with(ann: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "llama", "namespace": "default",
                         "annotations": {EXPORT_ANNOTATION: "ClusterSet", **ann}}}  # fmt: skip


def test_the_hub_epp_does_not_route_to_a_cluster_its_resolved_refs_calls_unresolved() -> None:
    """west's pool says ``kvgate.io/gateway: ""`` (a Helm value left empty) and names its EPP. The hub
    EPP's ResolvedRefs says False for west, yet ``clusters_for`` passed gateway="" on and the hub EPP's
    ``ClusterDirector`` made it an Endpoint with address "" it could pick."""
    members = [Member("east", None), Member("west", None)]  # type: ignore[arg-type]  # (no I/O here)
    ctl = ImportController(None, members, follow=("default", "llama"), parent=ParentRef("gateways", "global"),
                           parent_mode_only=True, writes=False)  # fmt: skip
    ctl.exported[("default", "llama")] = {
        "east": _pool_with({"kvgate.io/gateway": "10.1.0.2:8080"}),
        "west": _pool_with(
            {"kvgate.io/gateway": "", "kvgate.io/epp": "10.2.0.3:9002", "kvgate.io/health": ""}
        ),
    }
    state = ctl._parent_state(("default", "llama"))
    assert state is not None and state[0] == "False" and "west" in state[1]  # west: not resolved
    clusters = ctl.clusters_for(("default", "llama"))
    west = next(c for c in clusters if c.name == "west")
    assert (west.gateway, west.epp, west.health) == (None, "10.2.0.3:9002", None)
    director = ClusterDirector(ClustersConfig(clusters=(ClusterSpec("east", gateway="10.1.0.2:8080"),)),
                               "kvgate", seed=0)  # fmt: skip
    director.apply(ClustersConfig(clusters=clusters))
    assert list(director.states) == ["east"]
    # Blank both ways: no address at all, not routed, not resolved for a gateway routing in both modes.
    ctl.parent_mode_only = False
    ctl.exported[("default", "llama")]["west"] = _pool_with({"kvgate.io/gateway": " ", "kvgate.io/epp": ""})
    assert [c.name for c in ctl.clusters_for(("default", "llama"))] == ["east"]
    state = ctl._parent_state(("default", "llama"))
    assert state is not None and state[0] == "False" and "west" in state[1]


# -- R2: kvgate serve refuses parent_mode_only ---------------------------------------------------------


async def test_serve_refuses_parent_mode_only_at_the_start_and_at_a_reload(tmp_path: Path) -> None:
    """``parent_mode_only: true`` makes the import's ResolvedRefs count only gateway addresses (hub EPPs);
    ``kvgate serve`` routes in Endpoint mode too, so it was accepted silently and its status was wrong.
    Now refused: exit 2 naming the key at the start, the last good file kept at a reload."""
    from kvgate.multicluster.serve import serve_check  # (new with this fix)

    def section(parent_mode_only: bool) -> str:
        return (f"kubernetes:\n  server: http://127.0.0.1:9\n  import: default/llama\n"
                f"  parent_mode_only: {str(parent_mode_only).lower()}\n"
                f"  members:\n  - {{name: east, server: 'http://127.0.0.1:9'}}\n")  # fmt: skip

    f = tmp_path / "c.yaml"
    f.write_text(section(True))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--clusters", str(f), "--port=0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 2 and "kubernetes.parent_mode_only" in out and "Traceback" not in out, out
    with pytest.raises(ClustersError, match="parent_mode_only"):
        ClustersFile(f, check=serve_check)
    f.write_text(section(False))
    cfile = ClustersFile(f, check=serve_check, check_every_s=0.0)
    f.write_text(section(True) + "# changed\n")
    os.utime(f, (1, 1))  # (a new mtime whatever the clock's resolution)
    assert not cfile.maybe_reload(1.0)
    assert cfile.config.kubernetes is not None and not cfile.config.kubernetes.parent_mode_only
