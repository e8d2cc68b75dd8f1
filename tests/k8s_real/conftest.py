"""The real kube-apiserver the k8sreal modules share: one per session, given (``KVGATE_REAL_APISERVER`` and
``KUBECONFIG``, as ``make test-k8s-real`` sets them) or started here in a temporary run directory and
stopped after. Skipped where none can run; failed instead under ``KVGATE_REQUIRE_REAL_APISERVER=1`` (a run
with nothing tested is not a pass). ``scripts/real-apiserver.sh start`` runs it with the RBAC authorizer
(k8s27; AlwaysAllow before): the admin token is ``system:masters``; other identities get what RBAC grants."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "real-apiserver.sh"
BINARY = Path(
    subprocess.run(["bash", str(SCRIPT), "bin"], capture_output=True, text=True, check=True).stdout.strip()
)


def missing() -> str | None:
    """Why a real API server cannot be had here (None: it can)."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed (Debian: apt-get install kubernetes-client)"
    if not os.environ.get("KVGATE_REAL_APISERVER") and not (BINARY.exists() and shutil.which("etcd")):
        return (
            "no real kube-apiserver: set KVGATE_REAL_APISERVER (and KUBECONFIG) to one, or build it (and "
            "install etcd) with scripts/real-apiserver.sh build (make test-k8s-real does both)"
        )
    return None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(url, kubeconfig)`` of the server under test (its admin's credentials); started here (and stopped)
    unless given."""
    reason = missing()
    if reason is not None:
        if os.environ.get("KVGATE_REQUIRE_REAL_APISERVER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    url = os.environ.get("KVGATE_REAL_APISERVER")
    if url:
        kubeconfig = os.environ.get("KUBECONFIG")
        assert kubeconfig, (
            "KVGATE_REAL_APISERVER needs KUBECONFIG (scripts/real-apiserver.sh start prints it)"
        )
        yield url, kubeconfig
        return
    run = tmp_path_factory.mktemp("apiserver")
    env = {**os.environ, "KVGATE_APISERVER_RUN": str(run / "run"), "PY": sys.executable}
    out = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, f"real-apiserver.sh start failed:\n{out.stdout}\n{out.stderr}"
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    try:
        yield lines["URL"], lines["KUBECONFIG"]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60, check=False)
