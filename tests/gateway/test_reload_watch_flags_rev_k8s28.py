"""Review s28-rev-k8s28 F2: ``kvgate serve --config gw.yaml --pool-group inference.networking.x-k8s.io``
accepted a reload of a file left with no ``inferencePool`` pool ("restart to apply" for the pool change),
although the next restart with the same flags refuses it (exit 2, ``--pool-group: only with an
InferencePool to watch``): a pod that crash-loops at its next restart. ``--kube-server`` and
``--kubeconfig`` had the same gap. ``reload_loader`` refuses (the running config kept) what the next
restart would refuse with these flags, as it did for ``--kube-stale-after``. The three watch flags fail on
main 0d937292 (the reload is accepted); the ``--kube-stale-after`` case is the precedent (passes there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config.gateway import GatewayConfigError
from kvgate.gateway.cli import _parser, build_config, reload_loader
from kvgate.k8s import resources as R

WATCHED = "pools:\n- name: p\n  models: [m]\n  inferencePool: {name: llm, namespace: default}\n"
STATIC = "pools:\n- name: p\n  models: [m]\n  endpoints: [127.0.0.1:8001]\n"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--pool-group", R.LEGACY_GROUP), ("--kube-server", "http://127.0.0.1:1"),
     ("--kubeconfig", "/nonexistent/kubeconfig"), ("--kube-stale-after", "10")],
)  # fmt: skip
def test_a_reload_the_next_restart_would_refuse_is_refused(tmp_path: Path, flag: str, value: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(WATCHED)
    args = _parser().parse_args(["--config", str(path), flag, value])
    build_config(args)  # the start is accepted
    reload_loader(args)(str(path))  # and a reload of the same file
    path.write_text(STATIC)
    with pytest.raises(GatewayConfigError) as restart:
        build_config(args)
    with pytest.raises(GatewayConfigError) as reload:
        reload_loader(args)(str(path))
    assert str(reload.value).startswith(f"{flag}: ")
    assert str(reload.value) == str(restart.value)  # the restart's own words
