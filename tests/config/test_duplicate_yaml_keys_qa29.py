"""A YAML mapping key given twice in a config file is an error naming its key path and both lines, not
last-wins (review s29-qa29 Q1: a second ``limits:`` block appended before a reload silently dropped every
knob of the first; Go's yaml.v3 refuses it too). Every door's loader: the gateway file, a pool's
``endpointPickerConfigFile``, an EndpointPickerConfig, ``kvgate epp --config-text``, the clusters file.

Fails on 11cbef01 / be00955b (each file loads, the first value dropped)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate import yamlload
from kvgate.config.gateway import GatewayConfigError, load_gateway_config
from kvgate.config.picker import ConfigError, load_config
from kvgate.extproc import config as epp_config
from kvgate.multicluster import clusters

DOUBLE_LIMITS = """\
pools:
  - name: p
    endpoints: ["127.0.0.1:8001"]
    models: [m]
limits:
  maxBodyBytes: 1024
  drainTimeoutSeconds: 5
limits:
  requestTimeoutSeconds: 60
"""

DOUBLE_POOL_KEY = """\
pools:
  - name: p
    endpoints: ["127.0.0.1:8001"]
    models: [m]
    endpoints: ["127.0.0.1:8002"]
"""

DOUBLE_PICKER_KEY = """\
plugins:
  - type: prefix-cache-scorer
    parameters:
      blockSizeTokens: 32
      maxPrefixBlocksToMatch: 64
      blockSizeTokens: 16
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: prefix-cache-scorer}]
"""


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [(DOUBLE_LIMITS, "limits", (5, 8)), (DOUBLE_POOL_KEY, "pools[0].endpoints", (3, 5))],
    ids=["limits-twice", "pool-key-twice"],
)
def test_a_key_given_twice_in_the_gateway_file_is_an_error(tmp_path, text, key, lines):
    f = tmp_path / "gw.yaml"
    f.write_text(text)
    with pytest.raises(GatewayConfigError) as e:
        cfg = load_gateway_config(str(f))
        pytest.fail(f"loaded: maxBodyBytes={cfg.limits.max_body_bytes}, endpoints={cfg.pools[0].endpoints}")
    assert e.value.key == key
    assert str(e.value) == f"{key}: given twice (lines {lines[0]} and {lines[1]} of {f})"


def test_a_key_given_twice_in_an_endpoint_picker_config_is_an_error():
    with pytest.raises(ConfigError) as e:
        cfg = load_config(DOUBLE_PICKER_KEY)
        pytest.fail(f"loaded: {cfg.plugins[0].parameters}")
    assert str(e.value) == "plugins[0].parameters.blockSizeTokens: given twice (lines 4 and 6)"


def test_a_key_given_twice_in_a_pools_picker_file_names_the_pool_key_and_the_files_key(tmp_path):
    (tmp_path / "picker.yaml").write_text(DOUBLE_PICKER_KEY)
    f = tmp_path / "gw.yaml"
    f.write_text(
        "pools:\n- {name: p, endpoints: ['127.0.0.1:8001'], models: [m],"
        " endpointPickerConfigFile: picker.yaml}\n"
    )
    with pytest.raises(GatewayConfigError) as e:
        load_gateway_config(str(f))
    assert e.value.key == "pools[0].endpointPickerConfigFile"
    assert "plugins[0].parameters.blockSizeTokens: given twice (lines 4 and 6 of " in str(e.value)


def test_kvgate_epp_config_text_and_the_clusters_file_refuse_a_key_given_twice(tmp_path):
    common: dict[str, Any] = dict(config=None, pool_name=None, endpoints="127.0.0.1:1", models=["m"],
                  policy="kvgate", engine="vllm", config_file=None, conformance=False)  # fmt: skip
    with pytest.raises(epp_config.EppConfigError, match=r"^plugins\[0\]\.parameters\.blockSizeTokens: "):
        epp_config.load(**common, config_text=DOUBLE_PICKER_KEY)
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: []\nclusters: []\n")
    with pytest.raises(clusters.ClustersError, match=r"clusters: given twice \(lines 1 and 2\)"):
        clusters.load(f)


def test_anchors_merge_keys_and_an_alias_bomb_are_read_as_before():
    # An explicit key overriding a merged one is YAML's rule, not a repeat; a shared node is read once.
    doc = yamlload.safe_load("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nagain: *b\n")
    assert doc == {"base": {"x": 1, "y": 2}, "use": {"x": 1, "y": 3}, "again": {"x": 1, "y": 2}}
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    yamlload.check_unique_keys(yamlload.UniqueKeyLoader(bomb).get_single_node())  # (9**9 expanded)
    # The same key under two parents, and 1 against "1", are no repeat.
    assert yamlload.safe_load("a: {k: 1}\nb: {k: 2}\n1: x\n'1': y\n") == {
        "a": {"k": 1}, "b": {"k": 2}, 1: "x", "1": "y",
    }  # fmt: skip
