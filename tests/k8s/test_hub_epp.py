"""The hub EPP (``kvgate epp --clusters``) with its clusters from InferencePoolImport: the real CLI as a
subprocess, three API-server doubles (the hub, two members), the members' pools changed with the real
kubectl, and requests picked over real ext_proc gRPC on loopback. The same ``kubernetes:`` section as
``kvgate serve --clusters`` (``kvgate.multicluster.source.ClusterSource``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.extproc.testing import Exchange, channel
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.multicluster.imports import CONTROLLER_NAME, EXPORT_ANNOTATION
from multicluster.kube_objects import inference_pool

from .conftest import KUBECTL, Kubectl
from .eppproc import EppProc, launch_epp

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
LIMIT = 30.0  # seconds any one condition may take on a loaded machine
HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})
POOL = "inferencepools.inference.networking.k8s.io"
IMPORT = "inferencepoolimports.inference.networking.x-k8s.io"
EAST, WEST = "10.1.0.2:8080", "10.2.0.2:8080"  # the clusters' gateways (only named, never dialled)


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[tuple[Kubectl, Kubectl, Kubectl]]:
    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub,
        ApiServerDouble(bookmark_interval=0.2) as east,
        ApiServerDouble(bookmark_interval=0.2) as west,
    ):
        yield Kubectl(hub.url, tmp_path), Kubectl(east.url, tmp_path), Kubectl(west.url, tmp_path)


def _pool(gateway: str, *, exported: bool, name: str = "llama") -> str:
    return json.dumps(inference_pool(name, gateway, exported=exported))


def _clusters_file(tmp: Path, hub: str, east: str, west: str) -> Path:
    f = tmp / "clusters.yaml"
    f.write_text(
        f"kubernetes:\n  server: {hub}\n  import: default/llama\n  members:\n"
        f"  - {{name: east, server: '{east}', rtt_ms: 5}}\n  - {{name: west, server: '{west}', rtt_ms: 40}}\n"
    )
    return f


async def _until(probe: Callable[[], Awaitable[Any]], want: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while (got := await probe()) != want:
        assert loop.time() < deadline, f"{what}: {got!r}, expected {want!r}"
        await asyncio.sleep(0.1)


async def _exporters(hub: Kubectl, name: str = "llama") -> str:
    ours = f'.status.controllers[?(@.name=="{CONTROLLER_NAME}")]'
    return await hub.run("get", IMPORT, name, "--ignore-not-found",
                         "-o", f"jsonpath={{{ours}.exportingClusters[*].name}}")  # fmt: skip


async def _destinations(epp: EppProc, n: int = 4) -> set[str]:
    """Where ``n`` requests go first (round robin: every cluster the hub knows, in turn); a 503 as "503"."""
    out: set[str] = set()
    ch = channel(f"127.0.0.1:{epp.grpc}")
    try:
        for _ in range(n):
            async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                got = await ex.send_request(HEADERS, BODY)
            out.add(got.destination.split(",")[0] or str(got.status))  # (the rest: Envoy's fallbacks)
    finally:
        await ch.close()
    return out


async def test_hub_epp_routes_to_the_clusters_that_export_the_followed_import(
    three: tuple[Kubectl, Kubectl, Kubectl], tmp_path: Path
) -> None:
    hub, east, west = three
    await west.run("create", "-f", "-", stdin=_pool(WEST, exported=False))
    clusters = _clusters_file(tmp_path, hub.server, east.server, west.server)
    epp = await launch_epp(None, tmp_path / "epp.log", "--clusters", str(clusters),
                           "--cluster-policy", "round-robin")  # fmt: skip
    try:
        # Nothing exported yet: no cluster, not ready, and every pick a 503.
        status, text = await epp.readyz()
        assert status == 503 and text.startswith("no healthy endpoint"), text
        assert await _destinations(epp, 1) == {"503"}

        # An import appears (east exports its pool): the hub controller writes it, the EPP routes there.
        await east.run("create", "-f", "-", stdin=_pool(EAST, exported=True))
        await _until(lambda: _exporters(hub), "east", "the import's exporters")
        await _until(lambda: _destinations(epp), {EAST}, "destinations")
        assert (await epp.readyz())[0] == 200

        # west exports too (kubectl annotate on the member): both clusters, in turn.
        await west.run("annotate", POOL, "llama", f"{EXPORT_ANNOTATION}=ClusterSet")
        await _until(lambda: _exporters(hub), "east west", "the import's exporters")
        await _until(lambda: _destinations(epp), {EAST, WEST}, "destinations")

        # east stops exporting: the import lists west alone, and east is no longer picked.
        await east.run("annotate", POOL, "llama", f"{EXPORT_ANNOTATION}-")
        await _until(lambda: _exporters(hub), "west", "the import's exporters")
        await _until(lambda: _destinations(epp), {WEST}, "destinations")

        # west's pool names another gateway: the EPP follows it.
        await west.run("annotate", "--overwrite", POOL, "llama", "kvgate.io/gateway=10.2.0.9:8080")
        await _until(lambda: _destinations(epp), {"10.2.0.9:8080"}, "destinations")

        # The clusters file now follows another import, exported by east alone: applied without a
        # restart (the hub EPP's reload, as serve's), and that import written in the hub.
        await east.run("create", "-f", "-", stdin=_pool("10.1.0.3:8080", exported=True, name="mistral"))
        text = clusters.read_text().replace("default/llama", "default/mistral")
        clusters.write_text(text)
        await _until(lambda: _destinations(epp), {"10.1.0.3:8080"}, "destinations after the reload")
        await _until(lambda: _exporters(hub, "mistral"), "east", "the new import's exporters")
        assert "kubernetes section applied: import default/mistral" in epp.logs()
        assert await epp.stop() == 0
    finally:
        await epp.stop()
    assert "Traceback" not in epp.logs(), epp.logs()[-3000:]


async def test_hub_epp_names_one_cluster_per_literal_gateway_address_from_the_import(
    three: tuple[Kubectl, Kubectl, Kubectl], tmp_path: Path
) -> None:
    """small35 (a): west's pool names east's gateway in another spelling (a leading-zero port). Before, both
    were fed to the hub: two endpoints at one gateway, picked in turn. Now west's is ignored with a WARNING
    (as a clusters file naming it twice is refused), until west names a gateway of its own."""
    hub, east, west = three
    await east.run("create", "-f", "-", stdin=_pool(EAST, exported=True))
    await west.run("create", "-f", "-", stdin=_pool("10.1.0.2:08080", exported=True))
    clusters = _clusters_file(tmp_path, hub.server, east.server, west.server)
    epp = await launch_epp(None, tmp_path / "epp.log", "--clusters", str(clusters),
                           "--cluster-policy", "round-robin")  # fmt: skip
    try:
        await _until(lambda: _exporters(hub), "east west", "the import's exporters")
        await _until(lambda: _destinations(epp), {EAST}, "destinations")
        assert "of member west: its annotation kvgate.io/gateway '10.1.0.2:08080' is the address of " \
               "member east's" in epp.logs(), epp.logs()[-3000:]  # fmt: skip
        await west.run("annotate", "--overwrite", POOL, "llama", f"kvgate.io/gateway={WEST}")
        await _until(lambda: _destinations(epp), {EAST, WEST}, "destinations")
        assert await epp.stop() == 0
    finally:
        await epp.stop()
    assert "Traceback" not in epp.logs(), epp.logs()[-3000:]
