"""Fixtures: the API-server double on an ephemeral loopback port and a kubernetes-asyncio based client."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        yield d


@pytest.fixture
async def kube(double: ApiServerDouble) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(server=double.url)
    yield client
    await client.close()


class Kubectl:
    """The real kubectl against the double, in a subprocess (from a thread: the double shares the loop)."""

    def __init__(self, server: str, tmp: Path) -> None:
        self.server, self.tmp = server, tmp

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        assert KUBECTL is not None
        cmd = [KUBECTL, "--server", self.server, "--request-timeout=20s", *args]
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {res.returncode}: {res.stderr}")
        return res.stdout + res.stderr

    async def run(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        import asyncio

        return await asyncio.to_thread(self, *args, stdin=stdin, check=check)


@pytest.fixture
def kubectl(double: ApiServerDouble, tmp_path: Path) -> Kubectl:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    return Kubectl(double.url, tmp_path)


def pod_yaml(
    name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> str:
    import yaml

    meta: dict[str, object] = {"name": name, "labels": labels or {"app": "vllm"}}
    if annotations:
        meta["annotations"] = annotations
    spec = {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
