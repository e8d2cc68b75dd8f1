"""k8s27: ``--pool-namespace`` reads alike in both doors (``kvgate.k8s.poolflags``).

``kvgate epp`` took the reference EPP's order since qa26 F8 (the flag, else ``$NAMESPACE``, else
``default``); ``kvgate serve --pool-name`` read no env (a gateway Deployment with the reference chart's
``NAMESPACE`` env watched ``default``), and ``kvgate epp`` took ``--pool-namespace`` without
``--pool-name`` silently where ``kvgate serve`` refused it. The epp's refusal is a process test in
tests/test_cli_errors.py; its env order is tests/extproc/test_epp_pool_selection_qa26.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s.apiserver import ApiServerDouble


async def _until(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("flag", "env", "want"),
    [([], None, "default"), ([], "team-a", "team-a"), (["--pool-namespace", "ns"], "team-a", "ns"),
     (["--pool-namespace", ""], "team-a", "team-a")],
    ids=["neither", "env", "flag-over-env", "empty-flag-is-not-given"],
)  # fmt: skip
def test_serve_resolves_the_namespace_as_the_epp_does(
    monkeypatch: pytest.MonkeyPatch, flag: list[str], env: str | None, want: str
) -> None:
    """The reference EPP's order (``kvgate epp``'s since qa26 F8). Main: "env" read ``default``."""
    if env is None:
        monkeypatch.delenv("NAMESPACE", raising=False)
    else:
        monkeypatch.setenv("NAMESPACE", env)
    cfg = build_config(_parser().parse_args(["--pool-name", "llm", "--model", "m", *flag]))
    ref = cfg.pools[0].inference_pool
    assert ref is not None and ref.namespace == want


def test_serve_leaves_a_config_files_namespace_to_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``$NAMESPACE`` is read only for ``--pool-name``: a config file's pool keeps the namespace it names."""
    monkeypatch.setenv("NAMESPACE", "team-a")
    path = tmp_path / "gw.yaml"
    path.write_text("pools:\n- name: p\n  models: [m]\n  inferencePool: {name: llm, namespace: prod}\n")
    cfg = build_config(_parser().parse_args(["--config", str(path)]))
    ref = cfg.pools[0].inference_pool
    assert ref is not None and ref.namespace == "prod"


async def _serve(double: ApiServerDouble) -> GatewayServer:
    args = _parser().parse_args(["--pool-name", "llm", "--model", "m", "--kube-server", double.url,
                                 "--host", "127.0.0.1", "--port", "0"])  # fmt: skip
    cfg = build_config(args)
    gw = GatewayServer(cfg, build_pools(cfg))
    await gw.start()
    return gw


async def test_serve_watches_the_pool_in_the_namespace_env(
    double: ApiServerDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool and its pod in ``team-a`` only, ``NAMESPACE=team-a`` (as the reference charts set it): the
    gateway's store gets the pod's endpoint. Main: it watched ``default`` ("InferencePool default/llm not
    found in inference.networking.k8s.io/v1")."""
    monkeypatch.setenv("NAMESPACE", "team-a")
    double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                   "metadata": {"name": "llm", "namespace": "team-a"},
                   "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]}},
                  namespace="team-a")  # fmt: skip
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}},
                  namespace="team-a")  # fmt: skip
    double.set_pod_status("p0", "team-a", ip="10.0.0.7", ready=True)
    gw = await _serve(double)
    try:
        [kp] = gw.kube_pools
        await _until(lambda: {e.address for e in gw.pools[0].store.all()} == {"10.0.0.7:8000"},
                     f"the pod's endpoint (problem: {kp.problem()})")  # fmt: skip
        await _until(lambda: kp.problem() is None, "discovery ready")
    finally:
        await gw.stop(drain_timeout=1.0)


async def test_neither_given_serve_looks_in_default_and_says_so(
    double: ApiServerDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the flag nor the env: ``default``, and the same not-ready reason ``kvgate epp``'s /readyz
    gives (tests/extproc/test_epp_pool_selection_qa26.py; the reason is discovery's, shared)."""
    monkeypatch.delenv("NAMESPACE", raising=False)
    double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                   "metadata": {"name": "llm", "namespace": "team-a"},
                   "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]}},
                  namespace="team-a")  # fmt: skip
    gw = await _serve(double)
    try:
        [kp] = gw.kube_pools
        want = "InferencePool default/llm not found in inference.networking.k8s.io/v1"
        await _until(lambda: kp.problem() == want, f"{want!r} (last: {kp.problem()!r})")
    finally:
        await gw.stop(drain_timeout=1.0)
