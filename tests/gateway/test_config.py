"""Gateway YAML: a full example parses; each mistake is reported with the key that holds it."""

from __future__ import annotations

import textwrap

import pytest

from kvgate.config.gateway import (
    GatewayConfigError,
    config_from_flags,
    load_gateway_config,
    parse_gateway_config,
)
from kvgate.gateway.cli import _parser, build_config

EXAMPLE = """
listen: {host: 127.0.0.1, port: 8080, adminPort: 9090}
pools:
  - name: llama
    engine: vllm
    endpoints: ["http://127.0.0.1:8001", "127.0.0.1:8002"]
    models: [meta-llama/Llama-3.1-8B-Instruct]
    adapters: [sql-lora]
    endpointPickerConfigFile: epp.yaml
  - name: qwen
    engine: sglang
    policy: round-robin
    endpoints: ["127.0.0.1:9001"]
    models: [qwen]
objectives:
  - {name: critical, priority: 10}
  - {name: batch, priority: -1}
rewrites:
  - matches: [{model: {type: Exact, value: llama}}]
    targets:
      - {modelRewrite: meta-llama/Llama-3.1-8B-Instruct, weight: 90}
      - {modelRewrite: sql-lora, weight: 10}
limits: {maxBodyBytes: 1048576, maxConcurrentRequests: 500, requestTimeoutSeconds: 0, maxAttempts: 2}
health: {ejectAfterFailures: 5, ejectBaseSeconds: 2, ejectMaxSeconds: 30, probePath: /health}
scrapeIntervalSeconds: 0.1
"""

EPP = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
"""


def test_full_example(tmp_path):
    (tmp_path / "gw.yaml").write_text(EXAMPLE)
    (tmp_path / "epp.yaml").write_text(EPP)
    cfg = load_gateway_config(str(tmp_path / "gw.yaml"))
    assert (cfg.host, cfg.port, cfg.admin_port) == ("127.0.0.1", 8080, 9090)
    llama, qwen = cfg.pools
    assert llama.endpoints == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert llama.picker_config is not None and llama.picker_config["kind"] == "EndpointPickerConfig"
    assert llama.adapters == ["sql-lora"]
    assert (qwen.engine, qwen.policy, qwen.picker_config) == ("sglang", "round-robin", None)
    assert cfg.objectives == {"critical": 10, "batch": -1}
    assert [t.weight for t in cfg.rewrites[0].targets] == [90, 10]
    assert cfg.limits.max_attempts == 2 and cfg.limits.request_timeout_s == 0
    assert cfg.health.eject_after_failures == 5
    assert cfg.scrape_interval_s == 0.1


def _pool(**kw):
    return {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], **kw}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ([], "(top level)"),
        ({}, "pools"),
        ({"pools": [_pool()], "bogus": 1}, "bogus"),
        ({"pools": [_pool(endpoints=["exa_mple.com:80"])]}, "pools[0].endpoints[0]"),  # not a DNS name
        ({"pools": [_pool(endpoints=["127.0.0.1:99999"])]}, "pools[0].endpoints[0]"),
        ({"pools": [_pool(endpoints=["https://127.0.0.1:1", "http://127.0.0.1:2"])]}, "pools[0].endpoints"),
        ({"pools": [_pool(endpoints=["127.0.0.1:1", "http://127.0.0.1:1"])]}, "pools[0].endpoints"),
        ({"pools": [_pool(models=[])]}, "pools[0].models"),
        ({"pools": [_pool(models=[""])]}, "pools[0].models[0]"),
        ({"pools": [_pool(engine="tgi")]}, "pools[0].engine"),
        ({"pools": [_pool(policy="fastest")]}, "pools[0].policy"),
        (
            {"pools": [_pool(endpointPickerConfig={}, endpointPickerConfigFile="x")]},
            "pools[0].endpointPickerConfig",
        ),
        (
            {"pools": [_pool(endpointPickerConfigFile="/nonexistent/epp.yaml")]},
            "pools[0].endpointPickerConfigFile",
        ),
        ({"pools": [_pool(), _pool()]}, "pools[1].name"),
        ({"pools": [_pool(), _pool(name="q")]}, "pools[1]"),
        ({"pools": [_pool()], "objectives": [{"name": "a", "priority": "high"}]}, "objectives[0].priority"),
        ({"pools": [_pool()], "objectives": [{"name": "a"}, {"name": "a"}]}, "objectives[1].name"),
        ({"pools": [_pool()], "rewrites": [{"targets": []}]}, "rewrites[0].targets"),
        (
            {"pools": [_pool()], "rewrites": [{"targets": [{"modelRewrite": "m", "weight": 0}]}]},
            "rewrites[0].targets[0].weight",
        ),
        (
            {"pools": [_pool()], "rewrites": [{"targets": [{"modelRewrite": "zz", "weight": 1}]}]},
            "rewrites[0].targets[0].modelRewrite",
        ),
        (
            {
                "pools": [_pool()],
                "rewrites": [
                    {
                        "matches": [{"model": {"type": "Regex", "value": "m"}}],
                        "targets": [{"modelRewrite": "m"}],
                    }
                ],
            },
            "rewrites[0].matches[0].model.type",
        ),
        ({"pools": [_pool()], "limits": {"maxBodyBytes": -5}}, "limits.maxBodyBytes"),
        ({"pools": [_pool()], "limits": {"maxAttempts": True}}, "limits.maxAttempts"),
        ({"pools": [_pool()], "limits": {"maxAtempts": 2}}, "limits.maxAtempts"),
        (
            {"pools": [_pool()], "health": {"ejectBaseSeconds": 10, "ejectMaxSeconds": 1}},
            "health.ejectMaxSeconds",
        ),
        ({"pools": [_pool()], "listen": {"port": 70000}}, "listen.port"),
    ],
)
def test_errors_name_the_key(raw, key, tmp_path):
    with pytest.raises(GatewayConfigError) as ei:
        parse_gateway_config(raw, base_dir=str(tmp_path))
    assert ei.value.key == key, str(ei.value)
    assert str(ei.value).startswith(key + ": ")


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "gw.yaml"
    p.write_text(textwrap.dedent("pools: [\n  - name: x\n"))
    with pytest.raises(GatewayConfigError, match="not valid YAML"):
        load_gateway_config(str(p))


def test_cli_flags_build_one_pool():
    args = _parser().parse_args(
        [
            "--endpoints",
            "http://127.0.0.1:8001,http://127.0.0.1:8002",
            "--model",
            "m",
            "--policy",
            "least-request",
            "--port",
            "0",
            "--admin-port",
            "0",
        ]
    )
    cfg = build_config(args)
    assert cfg.pools[0].endpoints == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert cfg.pools[0].policy == "least-request"
    assert (cfg.port, cfg.admin_port) == (0, 0)
    with pytest.raises(GatewayConfigError) as ei:
        config_from_flags("127.0.0.1:x", ["m"])
    assert ei.value.key == "--endpoints"
    with pytest.raises(GatewayConfigError) as ei:
        build_config(_parser().parse_args(["--endpoints", "127.0.0.1:1"]))
    assert ei.value.key == "--model"


def test_picker_config_errors_name_the_pool(tmp_path):
    from kvgate.gateway.cli import build_pools, main

    raw = {
        "pools": [
            {"name": "ok", "endpoints": ["127.0.0.1:1"], "models": ["a"]},
            {
                "name": "bad",
                "endpoints": ["127.0.0.1:2"],
                "models": ["b"],
                "endpointPickerConfig": {
                    "plugins": [{"type": "no-such-scorer"}],
                    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "no-such-scorer"}]}],
                },
            },
        ]
    }
    with pytest.raises(GatewayConfigError) as ei:
        build_pools(parse_gateway_config(raw))
    assert ei.value.key == "pools[1].endpointPickerConfig" and "no-such-scorer" in str(ei.value)
    p = tmp_path / "gw.yaml"
    p.write_text(__import__("yaml").safe_dump(raw))
    assert main(["--config", str(p), "--port", "0"]) == 2  # refused before listening
    pools = build_pools(parse_gateway_config({"pools": raw["pools"][:1]}))
    assert [ep.address for ep in pools[0].endpoints()] == ["127.0.0.1:1"]


def test_model_series_grace_is_refused_where_no_series_go(capsys: pytest.CaptureFixture[str]) -> None:
    """``kvgate serve`` without ``--clusters`` and without a pool with an ``inferencePool`` never removes
    a model series (its config's names keep theirs; a rewrite rule without ``matches`` counts other names
    as ``other``): a ``--model-series-grace`` there would change nothing, so it is a config error (it was
    silently ignored before review s15-labels). Where it applies (doors17):
    ``tests/k8s/test_serve_model_series.py``."""
    from kvgate.gateway.cli import main

    assert main(["--endpoints", "127.0.0.1:1", "--model", "m", "--model-series-grace", "60"]) == 2
    err = capsys.readouterr().err
    assert "--model-series-grace" in err and "--clusters" in err and "inferencePool" in err
    flags = ["--pool-name", "p", "--model", "m", "--kube-server", "http://127.0.0.1:1"]
    assert main([*flags, "--model-series-grace", "0"]) == 2
    assert "--model-series-grace: must be > 0" in capsys.readouterr().err
