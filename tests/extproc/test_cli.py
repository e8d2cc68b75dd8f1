"""`kvgate epp` as a process: flags, ports read back, gRPC health, metrics, TLS from --cert-path."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvgate.extproc import config as epp_config
from kvgate.extproc import keys, tls
from kvgate.extproc.cli import main
from kvgate.extproc.testing import Exchange, channel

from .upstream import start_upstream

READY = re.compile(r"grpc=(\d+) health=(\d+) metrics=(\d+) tls=(on|off)")


async def _launch(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "epp", "--host", "127.0.0.1", "--port", "0",
        "--grpc-health-port", "0", "--metrics-port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    except BaseException:  # (a late ready line, a cancel: the child must not outlive the test)
        proc.kill()
        await proc.wait()
        raise
    m = READY.search(line)
    if m is None:
        proc.kill()
        err = await proc.stderr.read() if proc.stderr else b""
        await proc.wait()
        raise AssertionError(f"not ready: {line!r} {err.decode()[-2000:]}")
    return proc, {"grpc": int(m[1]), "health": int(m[2]), "metrics": int(m[3])}


@pytest.fixture
async def upstreams() -> AsyncIterator[list[str]]:
    ups = [await start_upstream() for _ in range(2)]
    yield [u.address for u in ups]
    for u in ups:
        await u.runner.cleanup()


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is not None:  # it died on its own: report that code, not a lookup error
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), 30)
    except BaseException:  # (it did not stop: killed, not left running past the test)
        proc.kill()
        await proc.wait()
        raise


async def test_plaintext_serves_health_metrics_and_picks(upstreams: list[str]) -> None:
    reference_only = ["--v", "3", "--zap-encoder", "json"]  # ignored with a warning, not fatal
    proc, ports = await _launch(
        "--endpoints", ",".join(upstreams), "--model", "m", "--plaintext", *reference_only
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['health']}") as hc:
            stub = health_pb2_grpc.HealthStub(hc)
            for service in (*keys.HEALTH_SERVICES, keys.LEGACY_HEALTH_SERVICE):
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
        ch = channel(f"127.0.0.1:{ports['grpc']}")
        async with Exchange(pb_grpc.ExternalProcessorStub(ch)) as ex:
            out = await ex.send_request({":method": "POST", ":path": "/v1/completions"},
                                        orjson.dumps({"model": "m", "prompt": "hi"}))  # fmt: skip
            await ex.send_response(200, {"content-type": "application/json"},
                                   [b'{"usage": {"prompt_tokens": 1, "completion_tokens": 2}}'])  # fmt: skip
        await ch.close()
        assert out.destination in upstreams
        url = f"http://127.0.0.1:{ports['metrics']}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            text = await r.text()
        assert "kvgate_epp_picks_total 1.0" in text
        assert "kvgate_epp_completion_tokens_total 2.0" in text
        assert "inference_extension_scheduler_e2e_duration_seconds" in text  # the picker's own metrics
    finally:
        assert await _stop(proc) == 0


async def test_tls_from_cert_path(tmp_path: Path, upstreams: list[str]) -> None:
    pair = tls.self_signed(("localhost", "127.0.0.1"))
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    proc, ports = await _launch("--endpoints", ",".join(upstreams), "--cert-path", str(tmp_path))
    try:
        ch = channel(f"127.0.0.1:{ports['grpc']}", root_cert=pair.cert_pem)
        async with Exchange(pb_grpc.ExternalProcessorStub(ch)) as ex:
            out = await ex.send_request({":method": "POST"}, orjson.dumps({"model": "m", "prompt": "x"}))
        await ch.close()
        assert out.destination in upstreams
    finally:
        assert await _stop(proc) == 0


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--plaintext"]) == 2
    assert "--endpoints" in capsys.readouterr().err
    assert main(["--endpoints", "not-an-address"]) == 2
    bad = tmp_path / "epc.yaml"
    bad.write_text("kind: Something\n")
    assert main(["--endpoints", "127.0.0.1:1", "--config-file", str(bad)]) == 2
    unknown_plugin = "kind: EndpointPickerConfig\nplugins:\n- type: no-such-scorer\n"
    assert main(["--endpoints", "127.0.0.1:1", "--config-text", unknown_plugin]) == 2
    assert "no-such-scorer" in capsys.readouterr().err
    assert main(["--endpoints", "127.0.0.1:1", "--policy", "no-such-policy"]) == 2
    capsys.readouterr()
    assert main(["--endpoints", "127.0.0.1:1", "--model", "m", "--model-series-grace", "-1"]) == 2
    assert "--model-series-grace" in capsys.readouterr().err


def test_gateway_config_pool_selection(tmp_path: Path) -> None:
    gw = tmp_path / "gw.yaml"
    gw.write_text(
        "pools:\n"
        "- {name: a, endpoints: ['127.0.0.1:1'], models: [m1]}\n"
        "- {name: b, endpoints: ['127.0.0.1:2', '127.0.0.1:3'], models: [m2], policy: reference}\n"
        "objectives: [{name: batch, priority: -1}]\n"
    )
    common: dict[str, Any] = dict(endpoints=None, models=[], policy="kvgate", engine="vllm", config_file=None,
                  config_text=None, conformance=False)  # fmt: skip
    with pytest.raises(epp_config.EppConfigError, match="--pool-name"):
        epp_config.load(config=str(gw), pool_name=None, **common)
    cfg = epp_config.load(config=str(gw), pool_name="b", **common)
    assert cfg.pool.endpoints == ["127.0.0.1:2", "127.0.0.1:3"] and cfg.pool.policy == "reference"
    assert cfg.objectives == {"batch": -1}
    # An EndpointPickerConfig with the conformance filter turns the hooks on, as in the reference.
    text = "kind: EndpointPickerConfig\nplugins:\n- type: header-based-testing-filter\n"
    cfg = epp_config.load(config=str(gw), pool_name="a", **{**common, "config_text": text})
    assert cfg.conformance_hooks and cfg.picker_config is not None


@pytest.mark.skipif(os.name != "posix", reason="signals")
async def test_default_is_tls(upstreams: list[str]) -> None:
    proc, ports = await _launch("--endpoints", ",".join(upstreams))
    try:
        ch = channel(f"127.0.0.1:{ports['grpc']}")  # plaintext client against the default server
        with pytest.raises(grpc.aio.AioRpcError):
            async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                await ex.send_request({":method": "POST"}, orjson.dumps({"model": "m", "prompt": "x"}))
        await ch.close()
    finally:
        assert await _stop(proc) == 0


def test_config_rewrites_and_objectives_reach_the_session(tmp_path: Path) -> None:
    from kvgate.datalayer.store import EndpointStore
    from kvgate.extproc.context import build_context

    gw = tmp_path / "gw.yaml"
    gw.write_text(
        "pools:\n"
        "- {name: p, endpoints: ['127.0.0.1:1'], models: [base, base-v2]}\n"
        "objectives: [{name: batch, priority: -2}]\n"
        "rewrites:\n"
        "- matches: [{model: {type: Exact, value: base}}]\n"
        "  targets: [{modelRewrite: base-v2, weight: 1}]\n"
    )
    cfg = epp_config.load(
        config=str(gw), pool_name=None, endpoints=None, models=[], policy="kvgate", engine="vllm",
        config_file=None, config_text=None, conformance=False,
    )  # fmt: skip
    ctx = build_context(cfg, EndpointStore.from_addresses(cfg.pool.endpoints))
    assert ctx.model_rewrite("base") == "base-v2"
    assert ctx.model_rewrite("other") is None
    assert ctx.policy.objectives.get("batch", 0) == -2 and ctx.policy.objectives.get("unknown", 0) == 0
    assert ctx.max_request_body == cfg.gateway.limits.max_body_bytes


async def test_reference_style_config_file_drives_the_pick(tmp_path: Path) -> None:
    """An EndpointPickerConfig written for the reference EPP loads unchanged and shapes the answer."""
    import time as _time

    from kvgate.datalayer.store import EndpointStore
    from kvgate.extproc.context import build_context
    from kvgate.extproc.server import EppServer, ServerOptions

    epc = tmp_path / "default-plugins.yaml"
    epc.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
        "kind: EndpointPickerConfig\n"
        "plugins:\n"
        "- type: queue-scorer\n"
        "- type: kv-cache-utilization-scorer\n"
        "- type: prefix-cache-scorer\n"
        "- type: max-score-picker\n"
        "  parameters: {maxNumOfEndpoints: 3}\n"
        "schedulingProfiles:\n"
        "- name: default\n"
        "  plugins:\n"
        "  - {pluginRef: queue-scorer, weight: 2}\n"
        "  - {pluginRef: kv-cache-utilization-scorer, weight: 2}\n"
        "  - {pluginRef: prefix-cache-scorer, weight: 3}\n"
        "  - {pluginRef: max-score-picker}\n"
    )
    addrs = ["127.0.0.1:18301", "127.0.0.1:18302", "127.0.0.1:18303"]
    cfg = epp_config.load(
        config=None, pool_name="pool", endpoints=",".join(addrs), models=["m"], policy="kvgate",
        engine="vllm", config_file=str(epc), config_text=None, conformance=False,
    )  # fmt: skip
    store = EndpointStore.from_addresses(cfg.pool.endpoints)
    ctx = build_context(cfg, store, clock=_time.monotonic)
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch)) as ex:
            out = await ex.send_request({":method": "POST"}, orjson.dumps({"model": "m", "prompt": "x"}))
    finally:
        await ch.close()
        await server.stop(0)
    assert sorted(out.destination.split(",")) == addrs  # three picks: the whole fallback list
    assert out.metadata_destination == out.destination


async def test_endpoint_label_reaches_the_pool_aggregate(upstreams: list[str]) -> None:
    """``--endpoint-label`` labels every static endpoint as a pod label would: here the GPU type, which the
    pool aggregate turns into ``ready_by_gpu`` and a speed-weighted ``capacity`` (A100 = 0.5)."""
    from kvgate.datalayer import aggregate as agg

    proc, ports = await _launch(
        "--endpoints", ",".join(upstreams), "--model", "m", "--plaintext",
        "--endpoint-label", "kvgate.io/gpu=A100", "--endpoint-label", "team=x",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{ports['metrics']}{agg.AGGREGATE_PATH}"
        async with aiohttp.ClientSession() as http:
            for _ in range(600):  # until both endpoints are scraped fresh (60 s: an EPP process; 15 before)
                async with http.get(url) as r:
                    a = agg.decode(await r.read())
                if a.ready_endpoints == 2:
                    break
                await asyncio.sleep(0.1)
        assert a.ready_by_gpu == {"a100": 2}
        assert a.capacity == pytest.approx(1.0)
    finally:
        assert await _stop(proc) == 0


def test_endpoint_label_needs_key_and_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--endpoints", "127.0.0.1:1", "--model", "m", "--plaintext", "--endpoint-label", "gpu"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
