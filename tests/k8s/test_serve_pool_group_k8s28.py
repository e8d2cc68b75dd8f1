"""k8s28: ``kvgate serve --pool-group`` (the reference EPP's flag, ``kvgate epp``'s names and semantics), and
``kvgate serve --config`` with ``--pool-name`` refused.

Main (2a9ab840) had no ``--pool-group`` on ``kvgate serve`` (exit 2, "unrecognized arguments"): the built-in
gateway could watch only a v1 InferencePool, where ``kvgate epp`` watches a v1alpha2 one (llm-d v0.3's pools)
since qa26 F8. As ``kvgate epp``: the value is one of the two groups (another is refused by the parser), it
applies to the pool ``--pool-name`` names or, with ``--config``, to the file's ``inferencePool`` pools, and
it is refused where no InferencePool is watched (and beside ``--clusters``).

``kvgate serve --config gw.yaml --pool-name X`` served the file and ignored ``X`` silently (s27's closing
note). ``kvgate epp --config`` reads ``--pool-name`` as which of the file's pools it serves, overriding
nothing in the file; ``kvgate serve`` serves every pool of its file, so it has nothing to pick: refused,
one line, exit 2, as ``--endpoints`` / ``--model`` beside ``--config`` are.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgate.config.gateway import GatewayConfigError
from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble

V1ALPHA2_POOL = {"apiVersion": R.LEGACY_INFERENCE_POOL.api_version, "kind": "InferencePool",
                 "metadata": {"name": "llm", "namespace": "default"},
                 "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000,
                          "extensionRef": {"name": "llm-epp"}}}  # fmt: skip
FILE = "pools:\n- name: p\n  models: [m]\n  inferencePool: {name: llm, namespace: default}\n"


async def _until(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


def _serve(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvgate.cli", "serve", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("how", ["pool-name", "config"])
async def test_serve_watches_a_v1alpha2_pool_with_pool_group(
    double: ApiServerDouble, tmp_path: Path, how: str
) -> None:
    """A v1alpha2 pool and its pod only: ``--pool-group inference.networking.x-k8s.io`` (with ``--pool-name``,
    or over a config file's ``inferencePool``) reaches the pod's endpoint, ready. Main: no such flag."""
    double.create(V1ALPHA2_POOL)
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}})
    double.set_pod_status("p0", ip="10.0.0.7", ready=True)
    path = tmp_path / "gw.yaml"
    path.write_text(FILE)
    door = ["--pool-name", "llm", "--model", "m"] if how == "pool-name" else ["--config", str(path)]
    args = _parser().parse_args([*door, "--pool-group", R.LEGACY_GROUP, "--kube-server", double.url,
                                 "--host", "127.0.0.1", "--port", "0"])  # fmt: skip
    cfg = build_config(args)
    gw = GatewayServer(cfg, build_pools(cfg))
    await gw.start()
    try:
        [kp] = gw.kube_pools
        assert kp.opts.pool_group == R.LEGACY_GROUP
        await _until(lambda: {e.address for e in gw.pools[0].store.all()} == {"10.0.0.7:8000"},
                     f"the pod's endpoint (problem: {kp.problem()})")  # fmt: skip
        await _until(lambda: kp.problem() is None, f"discovery ready (last: {kp.problem()})")
    finally:
        await gw.stop(drain_timeout=1.0)


def test_pool_group_takes_the_epps_values() -> None:
    """The same choices as ``kvgate epp --pool-group``, default v1 (None: KubeOptions' default)."""
    from kvgate.extproc.cli import parser as epp_parser

    serve = next(a for a in _parser()._actions if "--pool-group" in a.option_strings)
    epp = next(a for a in epp_parser()._actions if "--pool-group" in a.option_strings)
    assert list(serve.choices or ()) == list(epp.choices or ()) == sorted(R.POOL_GROUPS)
    assert build_config(_parser().parse_args(["--pool-name", "llm", "--model", "m"])).kube_pool_group is None


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--endpoints", "127.0.0.1:8001", "--model", "m", "--pool-group", R.LEGACY_GROUP], "--pool-group"),
     (["--config", "{file}", "--pool-name", "llm"], "--pool-name"),
     (["--config", "{file}", "--pool-name", "llm", "--pool-namespace", "prod"], "--pool-name"),
     (["--config", "{static}", "--pool-group", R.LEGACY_GROUP], "--pool-group")],
    ids=["group-with-endpoints", "name-with-config", "name-and-namespace-with-config",
         "group-with-a-static-config"],
)  # fmt: skip
def test_pool_flags_that_cannot_apply_are_refused(tmp_path: Path, argv: list[str], flag: str) -> None:
    """Main: ``--pool-group`` was unrecognized; ``--pool-name`` beside ``--config`` was ignored (served)."""
    watched, static = tmp_path / "gw.yaml", tmp_path / "static.yaml"
    watched.write_text(FILE)
    static.write_text("pools:\n- name: p\n  models: [m]\n  endpoints: [127.0.0.1:8001]\n")
    argv = [a.format(file=watched, static=static) for a in argv]
    with pytest.raises(GatewayConfigError) as e:
        build_config(_parser().parse_args(argv))
    assert str(e.value).startswith(f"{flag}: ")


def test_the_refusals_are_one_line_exit_2(tmp_path: Path) -> None:
    """The process: one ``config error`` line naming the flag, exit 2 (``--pool-group`` with ``--clusters``
    too: the hub watches no pool of its own)."""
    path = tmp_path / "gw.yaml"
    path.write_text(FILE)
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text("clusters:\n- {name: east, gateway: 127.0.0.1:1}\n")
    cases = [(["--config", str(path), "--pool-name", "other"], "--pool-name"),
             (["--clusters", str(clusters), "--pool-group", R.LEGACY_GROUP], "--pool-group")]  # fmt: skip
    for argv, flag in cases:
        out = _serve(argv)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        [line] = out.stderr.splitlines()
        assert line.startswith(f"kvgate serve: config error: {flag}: "), line
