"""Review s29-rev-cfg29 F3 (fixcfg29). ``kvgate serve --pool-group G --config gw.yaml``: a reload that
gives a pool an ``inferencePool.group`` other than G was accepted (reload_loader did not run
group_not_the_files), and the next restart with the same flags refuses the file (``--pool-group: ...
inferencePool.group``): the crash-loop-at-next-restart class reload_loader exists to stop (review
s28-rev-k8s28 F2). Fails on 2bc342a7 (f3b7b2c2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config.gateway import GatewayConfigError
from kvgate.gateway.cli import _parser, build_config, reload_loader
from kvgate.k8s import resources as R


def test_reload_refuses_a_group_the_flag_contradicts(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("pools:\n- name: p\n  models: [m]\n  inferencePool: {name: llm, namespace: default}\n")
    args = _parser().parse_args(["--config", str(path), "--pool-group", R.INFERENCE_POOL.group])
    build_config(args)
    path.write_text(
        "pools:\n- name: p\n  models: [m]\n"
        f"  inferencePool: {{name: llm, namespace: default, group: {R.LEGACY_GROUP}}}\n"
    )
    with pytest.raises(GatewayConfigError):  # what the next restart says
        build_config(_parser().parse_args(["--config", str(path), "--pool-group", R.INFERENCE_POOL.group]))
    with pytest.raises(GatewayConfigError) as e:
        reload_loader(args)(str(path))
    assert "inferencePool.group" in str(e.value), str(e.value)
