"""small34 (b): the EndpointPickerConfig's ``engineLabelKey`` (a ``core-metrics-extractor`` /
``model-server-protocol-metrics`` parameter; the reference reads that one pod label for a pod's engine) is
applied by ``kvgate epp`` as ``--engine-label-key`` is; the flag wins when both are given (said at INFO);
two extractors naming different labels are refused. Before, it was one "not applied" WARNING (rev-b33 F3)
and a pod labelled only under the configured key was scraped with vLLM's metric names. ``kvgate serve``
applies it too since small35 (``tests/k8s/test_serve_engine_label_key_small35.py``); a pool of listed
endpoints warns that it names nothing there.

Through the real ``kvgate epp`` (a subprocess) on the API-server double, its pod's model server answering
SGLang's metric names only: the pool's queue gauge reads 7 only when the pod is scraped as SGLang. The
subprocess tests fail on a2cd8c4f (the gauge never 7; no INFO line; the conflict started)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s.eppproc import launch_epp
from k8s.test_epp_pool_gauge_and_readiness_qa33a import _pod, _pool, _server, until
from kvgate.config.gateway import PoolConfig
from kvgate.gateway.pools import picker_spec
from kvgate.k8s.apiserver import ApiServerDouble

SGLANG = "sglang:num_queue_reqs 7\nsglang:num_running_reqs 1\nsglang:token_usage 0.5\n"
GAUGE = 'inference_pool_average_queue_size{name="llm"}'


def picker(*labels: str | None) -> dict[str, Any]:
    """A config with one extractor per label (None: no engineLabelKey), its queue scorer the profile."""
    plugins: list[dict[str, Any]] = [{"type": "queue-scorer"}, {"type": "metrics-data-source"}]
    for i, label in enumerate(labels):
        params = {} if label is None else {"engineLabelKey": label}
        plugins.append({"type": "core-metrics-extractor", "name": f"x{i}", "parameters": params})
    extractors = [{"pluginRef": f"x{i}"} for i in range(len(labels))]
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": plugins,
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
        "data": {"sources": [{"pluginRef": "metrics-data-source", "extractors": extractors}]},
    }


def test_engine_label_keys_reads_each_extractors_key() -> None:
    from kvgate.scheduling.plugins.wiring import engine_label_keys  # (new with this change)

    assert engine_label_keys(picker("example.com/engine")) == [
        ("plugins[2].parameters.engineLabelKey", "example.com/engine")
    ]
    assert engine_label_keys(picker(None, "")) == []  # (unset or empty: the default)
    assert engine_label_keys(None) == [] and engine_label_keys({"plugins": "x"}) == []


def test_kvgate_serve_warns_of_a_key_it_does_not_apply(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    def said(label: str, announce: bool = True) -> list[str]:
        caplog.clear()
        picker_spec(PoolConfig("p", ["127.0.0.1:9"], ["m"], picker_config=picker(label)), announce=announce)
        return [r.getMessage() for r in caplog.records if "engineLabelKey" in r.getMessage()]

    [line] = said("example.com/engine")
    assert "pool p: endpointPickerConfig.plugins[2].parameters.engineLabelKey 'example.com/engine'" in line
    # (small35 c: kvgate serve applies it to discovered pods; this pool's endpoints are listed)
    assert "names no engine here" in line and "listed" in line
    assert said("llm-d.ai/engine-type") == []  # (the reference's default: nothing to say)
    assert said("example.com/engine", announce=False) == []  # (a reparse says nothing again)


@pytest.fixture
async def double() -> AsyncIterator[ApiServerDouble]:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        yield d


async def _scraped_as_sglang(d: ApiServerDouble, tmp_path: Path, labels: dict[str, str], *flags: str) -> str:
    """Start ``kvgate epp --pool-name llm`` with ``flags``, a pod with ``labels``; wait for the SGLang
    reading (7); its log."""
    runner, port = await _server(SGLANG)
    epp = await launch_epp(d.url, tmp_path / "epp.log", "--pool-name", "llm", "--model", "m1",
                           "--scrape-interval", "0.1", *flags)  # fmt: skip
    try:
        _pod(d, labels)
        _pool(d, [port])

        async def seven() -> bool:
            return await epp.metric(GAUGE) == f"{GAUGE} 7.0"

        await until(seven, "the pod scraped with SGLang's metric names")
        return epp.logs()
    finally:
        assert await epp.stop() == 0
        await runner.cleanup()


async def test_the_configs_engine_label_key_names_the_engine(double: ApiServerDouble, tmp_path: Path) -> None:
    # (llm-d's label says vllm: only the configured key names sglang)
    labels = {"example.com/engine": "sglang", "llm-d.ai/engine-type": "vllm"}
    text = yaml.safe_dump(picker("example.com/engine"))
    logs = await _scraped_as_sglang(double, tmp_path, labels, "--config-text", text)
    assert "engineLabelKey" not in logs, logs[-2000:]  # (no "not applied" warning)


async def test_the_flag_wins_over_the_configs_key(double: ApiServerDouble, tmp_path: Path) -> None:
    labels = {"example.com/engine": "vllm", "example.com/flag": "sglang"}
    text = yaml.safe_dump(picker("example.com/engine"))
    logs = await _scraped_as_sglang(
        double, tmp_path, labels, "--config-text", text, "--engine-label-key", "example.com/flag"
    )
    want = "--engine-label-key 'example.com/flag' over the config's plugins[2].parameters.engineLabelKey"
    assert want in logs, logs[-2000:]


async def test_two_extractors_naming_different_labels_are_refused() -> None:
    text = yaml.safe_dump(picker("example.com/a", "example.com/b"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "epp", "--endpoints", "127.0.0.1:9", "--model", "m",
        "--plaintext", "--port", "0", "--grpc-health-port", "0", "--metrics-port", "0", "--config-text", text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        if proc.returncode is None:  # (timed out or cancelled: the child must not outlive the test)
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, out
    assert "plugins[3].parameters.engineLabelKey: 'example.com/b'" in out and "plugins[2]" in out, out
