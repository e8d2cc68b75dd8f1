"""A clusters-file reload that changes the ``kubernetes:`` section is applied live (``ClusterSource``): the
import controller restarted with the new members / import, a section that cannot be loaded refused with
the running one kept, the section removed giving the file's own clusters back. Three API-server doubles
over real HTTP, the real ``kvgate serve --clusters`` gateway in process, its reload loop reading the file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.multicluster.clusters import ClustersFile
from kvgate.multicluster.serve import GlobalGateway

from .kube_objects import exporters as _exporters
from .kube_objects import inference_pool as _pool

LIMIT = 30.0


async def _until(cond: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while not cond():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


def _write(f: Path, text: str) -> None:
    f.write_text(text)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime, however coarse


def _kube(hub: str, name: str, *members: str) -> str:
    return f"kubernetes:\n  server: {hub}\n  import: default/{name}\n  members:\n" + "".join(
        f"  - {m}\n" for m in members
    )


async def test_a_changed_kubernetes_section_applies_without_a_restart(tmp_path: Path) -> None:
    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as east_d,
        ApiServerDouble(bookmark_interval=0.2) as west_d,
    ):
        east_d.create(_pool("llama", "10.1.0.2:8080"))
        west_d.create(_pool("llama", "10.2.0.2:8080"))
        west_d.create(_pool("mistral", "10.2.0.3:8080"))
        east = f"{{name: east, server: '{east_d.url}', rtt_ms: 5}}"
        west = f"{{name: west, server: '{west_d.url}', rtt_ms: 40}}"
        f = tmp_path / "clusters.yaml"
        _write(f, _kube(hub_d.url, "llama", east))
        gw = GlobalGateway(ClustersFile(f, check_every_s=0.1).config, "kvgate", seed=0,
                           clusters_file=ClustersFile(f, check_every_s=0.1))  # fmt: skip
        port = await gw.start("127.0.0.1", 0)

        def routed() -> dict[str, str | None]:
            return {name: st.spec.gateway for name, st in gw.router.states.items()}

        try:
            await _until(lambda: routed() == {"east": "10.1.0.2:8080"}, "east only")
            # A member added: the controller restarted with both; the hub's import lists both.
            _write(f, _kube(hub_d.url, "llama", east, west))
            await _until(lambda: routed() == {"east": "10.1.0.2:8080", "west": "10.2.0.2:8080"}, "both")
            await _until(lambda: _exporters(hub_d, "llama") == ["east", "west"], "hub: both")
            assert gw.source.swaps == 1

            # Another import followed, with one member: its clusters only.
            _write(f, _kube(hub_d.url, "mistral", west))
            await _until(lambda: routed() == {"west": "10.2.0.3:8080"}, "mistral on west")
            await _until(lambda: _exporters(hub_d, "mistral") == ["west"], "hub: mistral")

            # A section that cannot be loaded (a kubeconfig that is not there yet): refused, the running
            # controller kept (and still following its members), /readyz says why.
            gw.source.retry_s = 0.5
            kubeconfig = tmp_path / "west.kubeconfig"
            _write(f, _kube(hub_d.url, "mistral", f"{{name: west, kubeconfig: '{kubeconfig}'}}"))
            await _until(lambda: (gw.source.problem() or "").startswith("kubernetes section not applied"),
                         "refused")  # fmt: skip
            west_d.patch(R.INFERENCE_POOL, "mistral", "default",
                         {"metadata": {"annotations": {"kvgate.io/gateway": "10.2.0.9:8080"}}})  # fmt: skip
            await _until(lambda: routed() == {"west": "10.2.0.9:8080"}, "the running controller kept")
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
                text = await r.text()
            assert r.status == 200 and "kubernetes section not applied" in text, text
            assert gw.source.swaps == 2

            # The kubeconfig appears (a Secret updated after the ConfigMap): the section is tried again
            # and applied, with no further change to the file.
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "c",
                "clusters": [{"name": "w", "cluster": {"server": west_d.url}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "w", "user": "u"}}],
            }))  # fmt: skip
            await _until(lambda: gw.source.swaps == 3 and gw.source.problem() is None, "retried")
            await _until(lambda: routed() == {"west": "10.2.0.9:8080"}, "through the kubeconfig")

            # The section removed: the file's own clusters again; nothing follows the members any more.
            _write(f, "clusters: [{name: static, gateway: '10.9.0.2:8080'}]\n")
            await _until(lambda: routed() == {"static": "10.9.0.2:8080"}, "the file's clusters")
            await _until(lambda: gw.source.imports is None and gw.source.problem() is None, "stopped")
            west_d.create(_pool("late", "10.2.0.4:8080"))
            await asyncio.sleep(0.5)
            assert routed() == {"static": "10.9.0.2:8080"}

            # A section added to a file that had none: followed from then on.
            _write(f, _kube(hub_d.url, "late", west))
            await _until(lambda: routed() == {"west": "10.2.0.4:8080"}, "the late import")
            assert gw.source.swaps == 5
        finally:
            await gw.stop()
