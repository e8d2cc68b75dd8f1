"""s27-qa Q2 (fixqa27a): the shipped manifests run ``kvgate epp`` with a drain under the pod's grace. The
chart passes ``--drain-timeout`` from ``inferenceExtension.drainTimeoutSeconds`` (120) and the pod's
``terminationGracePeriodSeconds`` stays 130 (upstream's) or grows to the drain plus 10 s; the static
manifest passes 120 under its 130. Fails on 53bd5818 (no such value or flag: the EPP cut its streams at 5 s
whatever the pod's grace)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.extproc.cli import parser

from .test_chart import BASE, by_kind, epp_args, render

ROOT = Path(__file__).resolve().parents[2]


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize(("drain", "grace"), [(None, 130), (60, 130), (300, 310)])
def test_the_chart_drains_under_the_pods_grace(drain: int | None, grace: int) -> None:
    values = BASE if drain is None else {**BASE, "inferenceExtension": {"drainTimeoutSeconds": drain}}
    docs = render(values)
    ns, unknown = parser().parse_known_args(epp_args(docs)[1:])
    assert unknown == [] and ns.drain_timeout == (120 if drain is None else drain)
    assert _pod(docs)["terminationGracePeriodSeconds"] == grace
    assert ns.drain_timeout + 10 <= grace


def test_the_static_manifest_drains_under_its_grace() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kvgate-epp.yaml").read_text()) if d]
    pod = _pod(docs)
    ns, unknown = parser().parse_known_args(pod["containers"][0]["args"])
    assert unknown == [] and ns.drain_timeout == 120
    assert ns.drain_timeout + 10 <= pod["terminationGracePeriodSeconds"]
