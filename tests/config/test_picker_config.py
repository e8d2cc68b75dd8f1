"""EndpointPickerConfig loading: the reference default verbatim, errors naming the key, fuzzing."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.config import ConfigError, load_config, parse_config
from kvgate.config.director import build_director
from kvgate.config.policies import POLICIES, policy_yaml
from kvgate.datalayer.store import EndpointStore

REFERENCE_DEFAULT = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:                      # [{name?, type, parameters?}]
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:           # [{name, plugins: [{pluginRef, weight?}]}]
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""


def test_reference_default_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(REFERENCE_DEFAULT)
    cfg = load_config(path)
    assert [p.type for p in cfg.plugins] == [
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
    ]
    assert [(r.plugin_ref, r.weight) for r in cfg.profiles[0].plugins] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    d = build_director(cfg, EndpointStore.from_addresses(["127.0.0.1:1"]))
    assert d.profiles["default"].picker is not None


def test_all_top_level_keys_and_detectors() -> None:
    text = (
        REFERENCE_DEFAULT
        + """\
featureGates: [flowControl]
saturationDetector:
  queueDepthThreshold: 8
  kvCacheUtilThreshold: 0.9
  metricsStalenessThreshold: 150ms
flowControl: {}
"""
    )
    cfg = load_config(text)
    assert cfg.feature_gates == ["flowControl"]
    assert (
        cfg.saturation_detector is not None and cfg.saturation_detector.parameters["queueDepthThreshold"] == 8
    )
    d = build_director(cfg, EndpointStore())
    assert d.detector is not None and getattr(d.detector, "staleness", None) == pytest.approx(0.15)
    text2 = """\
plugins:
- {type: concurrency-detector, name: conc, parameters: {maxConcurrency: 10}}
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 2}
saturationDetector: {pluginRef: conc}
"""
    d2 = build_director(load_config(text2), EndpointStore())
    assert type(d2.detector).__name__ == "ConcurrencyDetector"


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ("plugins:\n- type: no-such-scorer\n", "plugins[0].type"),
        (
            "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSize: 0}\n",
            "plugins[0].parameters.blockSize",
        ),
        (
            "plugins:\n- type: max-score-picker\n  parameters: {maxNumOfEndpoints: x}\n",
            "plugins[0].parameters.maxNumOfEndpoints",
        ),
        ("plugins:\n- type: queue-scorer\n  parameters: {typo: 1}\n", "plugins[0].parameters.typo"),
        (
            "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n"
            "  plugins:\n  - pluginRef: nope\n",
            "schedulingProfiles[0].plugins[0].pluginRef",
        ),
        (
            "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
            "  - pluginRef: queue-scorer\n    weight: -1\n",
            "schedulingProfiles[0].plugins[0].weight",
        ),
        ("plugins:\n- type: queue-scorer\n- type: queue-scorer\n", "plugins[1].name"),
        ("plugins:\n- name: x\n", "plugins[0].type"),
        ("apiVersion: v2\n", "apiVersion"),
        ("kind: Nope\n", "kind"),
        ("surprise: 1\n", "surprise"),
        ("saturationDetector: {queueDepth: 1}\n", "saturationDetector.queueDepth"),
        ("saturationDetector: {pluginRef: ghost}\n", "saturationDetector.pluginRef"),
        (
            "plugins:\n- type: random-picker\n- type: max-score-picker\nschedulingProfiles:\n- name: d\n"
            "  plugins:\n  - pluginRef: random-picker\n  - pluginRef: max-score-picker\n",
            "schedulingProfiles[0].plugins[1]",
        ),
        ("plugins: 3\n", "plugins"),
        (
            "plugins:\n- type: utilization-detector\n  parameters: {metricsStalenessThreshold: soon}\n",
            "plugins[0].parameters.metricsStalenessThreshold",
        ),
    ],
)
def test_bad_configs_name_the_key(doc: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(doc)
    assert str(ei.value).startswith(key), str(ei.value)


def test_invalid_yaml() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config("plugins: [\n")


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_yaml_round_trips(name: str) -> None:
    assert load_config(policy_yaml(name)).profiles


@pytest.mark.parametrize("gate", ["flowcontrol", "bogusGate"])
def test_an_unknown_feature_gate_is_an_error_naming_it(gate: str) -> None:
    """A typo in a gate must not leave the feature silently off (review s18-qa M2: it started, and flow
    control never ran); the reference refuses unregistered gates too."""
    want = rf"featureGates\[1\]: unknown feature gate '{gate}' \(known: flowControl\)"
    plugins = [{"type": "queue-scorer"}]
    with pytest.raises(ConfigError, match=want):
        parse_config({"plugins": plugins, "featureGates": ["flowControl", gate]})
    assert parse_config({"plugins": plugins, "featureGates": ["flowControl"]}).feature_gates


def test_feature_gates_take_the_name_equals_bool_form() -> None:
    """``name=bool`` (Go's ParseBool; the last entry wins), reference gates kvgate lacks refused only when on
    (review s18-gw L1: ``flowControl=true`` was "unknown")."""
    plugins = [{"type": "queue-scorer"}]

    def gates(*entries: str) -> list[str]:
        return parse_config({"plugins": plugins, "featureGates": list(entries)}).feature_gates

    assert gates("flowControl=true") == ["flowControl"]
    assert gates("flowControl=false") == []
    assert gates("flowControl", "flowControl=F") == []
    assert gates("flowControl=0", "flowControl=TRUE") == ["flowControl"]
    assert gates("dataLayer=false", "flowControl") == ["flowControl"]
    # The config keeps its own name (review s18-qa2 L1: the gate loop's variable replaced it).
    cfg = parse_config({"plugins": plugins, "featureGates": ["flowControl"]}, name="mine")
    assert cfg.name == "mine"
    with pytest.raises(ConfigError, match=r"featureGates\[0\]: feature gate 'dataLayer' is not supported"):
        gates("dataLayer")
    with pytest.raises(ConfigError, match=r"featureGates\[1\]: 'flowControl=yes': expected flowControl=true"):
        gates("flowControl", "flowControl=yes")


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=6)
)
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["plugins", "schedulingProfiles", "saturationDetector", "featureGates", "kind", "parser"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _docs, max_size=4))
def test_fuzz_only_config_errors(doc: dict[str, Any]) -> None:
    """Arbitrary documents either load or fail with a ConfigError, never another exception."""
    with contextlib.suppress(ConfigError):
        parse_config(doc)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(
                    [
                        "queue-scorer",
                        "prefix-cache-scorer",
                        "max-score-picker",
                        "token-load-scorer",
                        "kvgate-cost-scorer",
                        "lora-affinity-scorer",
                    ]
                )
            },
            optional={
                "parameters": st.dictionaries(
                    st.sampled_from(["blockSize", "maxNumOfEndpoints", "decodeWeight", "bogus"]),
                    st.one_of(st.integers(-2, 100), st.text(max_size=3)),
                    max_size=2,
                )
            },
        ),
        max_size=4,
    )
)
def test_fuzz_plugin_lists(plugins: list[dict[str, Any]]) -> None:
    doc = yaml.safe_dump({"plugins": plugins})
    try:
        cfg = load_config(doc)
    except ConfigError as e:
        assert str(e).startswith(("plugins[", "schedulingProfiles"))
        return
    build_director(cfg, EndpointStore.from_addresses(["127.0.0.1:1"]))


def test_one_config_error_base_carries_the_key_path() -> None:
    from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
    from kvgate.extproc.config import EppConfigError
    from kvgate.scheduling.framework import ConfigError

    with pytest.raises(ConfigError) as picker:
        parse_config({"plugins": [{"type": "queue-scorer", "parameters": {"nope": 1}}]})
    assert picker.value.key == "plugins[0].parameters.nope"
    with pytest.raises(ConfigError) as gateway:
        parse_gateway_config({"pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"],
                                         "engine": "nope"}]})  # fmt: skip
    assert isinstance(gateway.value, GatewayConfigError) and gateway.value.key == "pools[0].engine"
    assert issubclass(EppConfigError, ConfigError)


def test_every_named_policy_is_accepted_by_the_gateway_config_and_both_clis() -> None:
    from kvgate.config.gateway import config_from_flags
    from kvgate.extproc.cli import parser as epp_parser
    from kvgate.gateway.cli import _parser as serve_parser

    for name in POLICIES:
        assert config_from_flags("127.0.0.1:1", ["m"], policy=name).pools[0].policy == name
        assert serve_parser().parse_args(["--policy", name]).policy == name
        assert epp_parser().parse_args(["--policy", name]).policy == name
    assert "sglang-cache-aware" in POLICIES
