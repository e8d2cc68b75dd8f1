"""cfg29: ``pools[].inferencePool.group`` in a gateway config file, the pool's own InferencePool API group
(as an HTTPRoute backendRef or an InferenceObjective's ``poolRef`` names it), so one file can watch a
v1alpha2 pool (llm-d v0.3's charts) beside v1 ones, for ``kvgate serve`` and ``kvgate epp`` alike; until
now only ``--pool-group`` chose it, for every pool. A ``--pool-group`` naming another group than a pool's
own is refused, as ``--pool-namespace`` beside a file's namespace. Fails on main 19a4d71a: ``group`` was an
unknown key (``pools[0].inferencePool.group``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgate.config.gateway import POOL_GROUPS, GatewayConfigError, parse_gateway_config
from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble

V1ALPHA2_POOL = {"apiVersion": R.LEGACY_INFERENCE_POOL.api_version, "kind": "InferencePool",
                 "metadata": {"name": "llm", "namespace": "default"},
                 "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000,
                          "extensionRef": {"name": "llm-epp"}}}  # fmt: skip
FILE = (
    "pools:\n- name: p\n  models: [m]\n"
    f"  inferencePool: {{name: llm, namespace: default, group: {R.LEGACY_GROUP}}}\n"
)


async def _until(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


def test_the_groups_are_the_k8s_layers() -> None:
    assert sorted(POOL_GROUPS) == sorted(R.POOL_GROUPS)


def test_group_is_read_and_checked() -> None:
    cfg = parse_gateway_config(
        {"pools": [{"name": "p", "models": ["m"], "inferencePool": {"name": "llm", "group": R.LEGACY_GROUP}}]}
    )
    assert cfg.pools[0].inference_pool is not None and cfg.pools[0].inference_pool.group == R.LEGACY_GROUP
    with pytest.raises(GatewayConfigError) as e:
        parse_gateway_config(
            {
                "pools": [
                    {"name": "p", "models": ["m"], "inferencePool": {"name": "llm", "group": "example.com"}}
                ]
            }
        )
    assert str(e.value).startswith("pools[0].inferencePool.group: 'example.com' is not one of"), str(e.value)


async def test_serve_watches_the_pools_own_group(double: ApiServerDouble, tmp_path: Path) -> None:
    """A v1alpha2 pool and its pod, the group in the file and no flag: the pod's endpoint, ready."""
    double.create(V1ALPHA2_POOL)
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}})
    double.set_pod_status("p0", ip="10.0.0.7", ready=True)
    path = tmp_path / "gw.yaml"
    path.write_text(FILE)
    args = _parser().parse_args(
        ["--config", str(path), "--kube-server", double.url, "--host", "127.0.0.1", "--port", "0"]
    )
    cfg = build_config(args)
    gw = GatewayServer(cfg, build_pools(cfg))
    await gw.start()
    try:
        [kp] = gw.kube_pools
        assert kp.opts.pool_group == R.LEGACY_GROUP
        await _until(lambda: {e.address for e in gw.pools[0].store.all()} == {"10.0.0.7:8000"},
                     f"the pod's endpoint (problem: {kp.problem()})")  # fmt: skip
    finally:
        await gw.stop(drain_timeout=1.0)


def test_a_flag_naming_another_group_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(FILE)
    with pytest.raises(GatewayConfigError) as e:
        build_config(_parser().parse_args(["--config", str(path), "--pool-group", R.INFERENCE_POOL.group]))
    assert str(e.value).startswith("--pool-group: ") and "inferencePool.group" in str(e.value), str(e.value)
    same = build_config(_parser().parse_args(["--config", str(path), "--pool-group", R.LEGACY_GROUP]))
    assert same.pools[0].inference_pool is not None


def test_epp_refuses_a_flag_naming_another_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvgate.extproc.cli import main

    path = tmp_path / "gw.yaml"
    path.write_text(FILE)
    rc = main(
        [
            "--config",
            str(path),
            "--pool-name",
            "p",
            "--pool-group",
            R.INFERENCE_POOL.group,
            "--grpc-port",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--pool-group: " in err and "inferencePool.group" in err, (rc, err[-400:])
