"""qa35a F2: the chart's EPP Deployment uses gRPC probes (Kubernetes' ``grpc`` probe: alpha in 1.23 behind
a feature gate, beta and on by default from 1.24, KEP-2727), which an older API server refuses
(``unknown field "grpc"``). The chart says so up front: Helm's ``kubeVersion`` in Chart.yaml (``helm
install`` refuses an older cluster by name), and docs/kubernetes.md's prerequisites name the version.
Failed before: Chart.yaml had no ``kubeVersion``."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python as helm

from .test_chart import BASE, CHART, render

ROOT = Path(__file__).resolve().parents[2]
GRPC_PROBE_MIN = (1, 24)  # the gRPC probe's beta, on by default (KEP-2727)


def _has_grpc_probe() -> bool:
    for doc in render(BASE):
        if doc.get("kind") != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if any("grpc" in (c.get(p) or {}) for p in ("livenessProbe", "readinessProbe", "startupProbe")):
                return True
    return False


def test_the_chart_names_the_kubernetes_its_probes_need() -> None:
    assert _has_grpc_probe()  # (the premise: drop this test's bound if the probes change)
    with helm.Chart.load(str(CHART)) as chart:
        constraint = chart.metadata.get("kubeVersion") or ""
    # Helm's semver range, with "-0" so a provider's pre-release-tagged build (v1.24.3-eks-...) passes.
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)-0", constraint)
    assert m, f"Chart.yaml kubeVersion {constraint!r}: want '>=1.X.Y-0'"
    assert (int(m[1]), int(m[2])) == GRPC_PROBE_MIN
    prereq = (ROOT / "docs" / "kubernetes.md").read_text().split("## Deploying kvgate as the EPP")[1][:1500]
    assert "Kubernetes 1.24" in prereq, "docs/kubernetes.md's Helm prerequisites name no Kubernetes version"
