"""Review qa36a (EndpointPickerConfig as users bring it): F2, F1, F7, F9, F5 and F10's size cap at load.

Each test failed on main 8cfcc4d7: F2 ``metricsStalenessThreshold: 0`` counted every endpoint stale (the
reference reads 0, Go's zero value, as its default); F1 a 400-digit integer was an ``OverflowError``
naming no key; F7 ``1m0s`` was refused; F9 a mistyped path or policy said "must be a mapping, got str"
(``""``: ``IsADirectoryError``); F5 an empty picker file loaded as no picker at all; F10 no size cap.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re

import pytest

from kvgate.config.director import as_config
from kvgate.config.gateway import GatewayConfigError, load_gateway_config
from kvgate.config.picker import instantiate, load_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.extproc import cli as epp_cli
from kvgate.extproc.config import EppConfigError, _picker_config
from kvgate.flowcontrol.config import parse_flow_control
from kvgate.scheduling import registry
from kvgate.scheduling.framework import ConfigError, Params, PluginHandle, parse_duration
from kvgate.yamlload import MAX_CONFIG_BYTES, MAX_CONFIG_BYTES_ENV

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
BIG = "9" * 400  # an integer no float holds
GW = "pools:\n- name: p\n  endpoints: [127.0.0.1:9]\n  models: [m]\n  endpointPickerConfigFile: epc.yaml\n"


def _detector(section: str):
    cfg = load_config(HEAD + "plugins:\n- type: queue-scorer\n" + section)
    return cfg, instantiate(cfg.saturation_detector, PluginHandle(None, lambda: 0.0, 2.0, random.Random(0)))


# --- F2: the inline saturationDetector's values the reference replaces by its default -------------------


@pytest.mark.parametrize("zero", ["0", "0s", "0h0m0s", "0.0"])
def test_f2_zero_staleness_inline_is_the_default_not_always_stale(zero: str) -> None:
    cfg, det = _detector(f"saturationDetector:\n  metricsStalenessThreshold: {zero}\n")
    assert det.staleness == pytest.approx(0.2)
    idle = Endpoint(address="a:1", metrics=EndpointMetrics(updated_at=10.0))  # scraped 50 ms ago
    assert det.endpoint_saturation(idle, 10.05) < 1.0
    assert cfg.warnings == []  # (0 is Go's "unset": nothing to say)


def test_f2_zero_thresholds_inline_are_the_defaults() -> None:
    cfg, det = _detector("saturationDetector:\n  queueDepthThreshold: 0\n  kvCacheUtilThreshold: 0\n")
    assert (det.queue_threshold, det.kv_threshold) == (5.0, 0.8)
    assert cfg.warnings == []


@pytest.mark.parametrize(
    "key, value, attr, default",
    [
        ("kvCacheUtilThreshold", "1.0", "kv_threshold", 0.8),  # the reference: (0, 1) exclusive
        ("queueDepthThreshold", "-3", "queue_threshold", 5.0),
        ("metricsStalenessThreshold", "-1s", "staleness", 0.2),
    ],
)
def test_f2_other_values_the_reference_replaces_take_its_default_with_a_warning(
    key: str, value: str, attr: str, default: float
) -> None:
    cfg, det = _detector(f"saturationDetector:\n  {key}: {value}\n")
    assert getattr(det, attr) == pytest.approx(default)
    assert [w for w in cfg.warnings if w.startswith(f"saturationDetector.{key}: ")], cfg.warnings


def test_f2_inline_values_in_range_are_kept() -> None:  # (the control)
    cfg, det = _detector(
        "saturationDetector:\n  queueDepthThreshold: 8\n  kvCacheUtilThreshold: 0.9\n"
        "  metricsStalenessThreshold: 1m0s\n"
    )
    assert (det.queue_threshold, det.kv_threshold, det.staleness) == (8.0, 0.9, 60.0)
    assert cfg.warnings == []


def test_f2_the_plugin_form_refuses_zero_staleness_as_the_reference_plugin() -> None:
    text = HEAD + "plugins:\n- type: utilization-detector\n  parameters: {metricsStalenessThreshold: 0s}\n"
    with pytest.raises(ConfigError, match=re.escape("plugins[0].parameters.metricsStalenessThreshold")):
        load_config(text)


# --- F1: an integer too large for a float is an error naming the key -------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        (
            "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: default\n  plugins:\n"
            f"  - pluginRef: queue-scorer\n    weight: {BIG}\n",
            "schedulingProfiles[0].plugins[0].weight",
        ),
        (f"plugins:\n- type: token-load-scorer\n  parameters:\n    decodeWeight: {BIG}\n",
         "plugins[0].parameters.decodeWeight"),
        (f"plugins:\n- type: queue-scorer\nsaturationDetector:\n  kvCacheUtilThreshold: {BIG}\n",
         "saturationDetector.parameters.kvCacheUtilThreshold"),
        (f"plugins:\n- type: queue-scorer\nsaturationDetector:\n  metricsStalenessThreshold: {BIG}\n",
         "saturationDetector.parameters.metricsStalenessThreshold"),
        (f"featureGates: [flowControl]\nplugins:\n- type: queue-scorer\nflowControl:\n  maxBytes: '{BIG}'\n",
         "flowControl.maxBytes"),
    ],
)  # fmt: skip
def test_f1_huge_integer_is_a_config_error_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        load_config(HEAD + text)


def _parameter_keys() -> list[tuple[str, str]]:
    """Every (plugin type, parameter) a plugin reads when built with no parameters."""
    out = []
    for t in registry.types():
        p = Params({}, "probe")
        # (a plugin needing a parameter raises: the keys read before the error still count)
        with contextlib.suppress(ValueError):
            registry.get(t).create("n", p, PluginHandle())
        out.extend((t, k) for k in sorted(p._seen))
    return out


def test_f1_no_plugin_parameter_overflows_on_a_huge_integer() -> None:
    keys = _parameter_keys()
    assert len(keys) > 50  # (the probe reads the registry: not an empty loop)
    logging.disable(logging.WARNING)
    try:
        wrong = []
        for t, k in keys:
            for v in (BIG, "-" + BIG):
                try:
                    load_config(HEAD + f"plugins:\n- type: {t}\n  parameters:\n    {k}: {v}\n")
                except ConfigError as e:
                    if f".{k}: " not in str(e):
                        wrong.append((t, k, str(e)[:80]))
                except Exception as e:  # (what the finding was: OverflowError, no key)
                    wrong.append((t, k, f"{type(e).__name__}: {str(e)[:80]}"))
                else:
                    wrong.append((t, k, "accepted"))
    finally:
        logging.disable(logging.NOTSET)
    assert wrong == []


def test_f1_kvgate_epp_exits_2_naming_the_key(tmp_path, capsys) -> None:
    f = tmp_path / "huge.yaml"
    f.write_text(HEAD + f"plugins:\n- type: token-load-scorer\n  parameters:\n    decodeWeight: {BIG}\n")
    rc = epp_cli.main(["--endpoints", "127.0.0.1:9", "--model", "m", "--config-file", str(f)])
    assert rc == 2
    assert "plugins[0].parameters.decodeWeight: must be a finite number" in capsys.readouterr().err


# --- F7: Go durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("1m0s", 60.0), ("1m30s", 90.0), ("1h0m0s", 3600.0), ("1h2m3.5s", 3723.5), ("300ms", 0.3),
     ("1.5h", 5400.0), ("2us", 2e-6), ("2\u00b5s", 2e-6), ("2\u03bcs", 2e-6), ("500ns", 5e-7),
     (".5s", 0.5), ("0", 0.0), ("2", 2.0), ("200 ms", 0.2), ("-1m0s", -60.0)],
)  # fmt: skip
def test_f7_go_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1m 0s", "1d", "1e3s", "ms1", "1..5s", "--1s"])
def test_f7_what_go_refuses_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("value, seconds", [("1m0s", 60.0), ("1m30s", 90.0), ("1h0m0s", 3600.0)])
def test_f7_go_durations_load_where_the_reference_takes_them(value: str, seconds: float) -> None:
    assert parse_flow_control({"defaultRequestTTL": value}).ttl == pytest.approx(seconds)
    _, det = _detector(f"saturationDetector:\n  metricsStalenessThreshold: {value}\n")
    assert det.staleness == pytest.approx(seconds)


def test_f7_a_negative_duration_stays_refused_in_a_plugin() -> None:
    with pytest.raises(ConfigError, match=r"^flowControl\.defaultRequestTTL: must be a duration >= 0"):
        parse_flow_control({"defaultRequestTTL": "-1m0s"})


# --- F9: a mistyped path or policy name is said so ---------------------------------------------------------


@pytest.mark.parametrize("source", ["kvgatee", "/nonexistent/epc.yaml", "docs/nope.yaml"])
def test_f9_missing_file_or_policy_name_is_named(source: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(source)) + " is no file"):
        load_config(source)
    with pytest.raises(ConfigError, match=re.escape(repr(source)) + " is neither a policy .* nor a file"):
        as_config(source)


def test_f9_an_empty_source_is_said_empty() -> None:
    with pytest.raises(ConfigError, match=r"^config: empty"):
        load_config("")


# --- F5: a picker file holding no document is refused at every door -------------------------------------


@pytest.mark.parametrize("content", ["", "\n", "# only a comment\n# and another\n"])
def test_f5_an_empty_picker_file_is_refused(tmp_path, content: str) -> None:
    epc = tmp_path / "epc.yaml"
    epc.write_text(content)
    with pytest.raises(ConfigError, match="holds no EndpointPickerConfig"):
        load_config(str(epc))
    gw = tmp_path / "gw.yaml"
    gw.write_text(GW)
    key = r"^pools\[0\]\.endpointPickerConfigFile: "
    with pytest.raises(GatewayConfigError, match=key + r"epc\.yaml holds no"):
        load_gateway_config(str(gw))
    with pytest.raises(EppConfigError, match=r"^--config-file: .* holds no EndpointPickerConfig"):
        _picker_config(str(epc), None)
    epc.write_text(HEAD + "plugins:\n- type: queue-scorer\n")  # (the control: the same doors take a config)
    assert load_gateway_config(str(gw)).pools[0].picker_config is not None
    assert _picker_config(str(epc), None) is not None


# --- F10: a file over the cap is refused naming the file and the limit --------------------------------------


def test_f10_a_picker_file_over_the_cap_is_refused_at_every_door(tmp_path, monkeypatch) -> None:
    epc = tmp_path / "epc.yaml"
    good = HEAD + "plugins:\n- type: queue-scorer\n"
    epc.write_text(good + ("# " + "x" * 1000 + "\n") * (MAX_CONFIG_BYTES // 1000))
    assert epc.stat().st_size > MAX_CONFIG_BYTES
    said = f"is larger than {MAX_CONFIG_BYTES} bytes"
    with pytest.raises(ConfigError, match=said):
        load_config(str(epc))
    gw = tmp_path / "gw.yaml"
    gw.write_text(GW)
    key = r"^pools\[0\]\.endpointPickerConfigFile: "
    with pytest.raises(GatewayConfigError, match=key + r".*epc\.yaml " + said):
        load_gateway_config(str(gw))
    with pytest.raises(EppConfigError, match=r"^--config-file: .*" + said):
        _picker_config(str(epc), None)
    monkeypatch.setenv(MAX_CONFIG_BYTES_ENV, str(2 * MAX_CONFIG_BYTES))  # (the documented way past it)
    assert load_config(str(epc)).plugins[0].type == "queue-scorer"
    assert load_gateway_config(str(gw)).pools[0].picker_config is not None
