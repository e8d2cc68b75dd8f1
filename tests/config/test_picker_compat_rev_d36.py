"""Review rev-d36 of the EndpointPickerConfig compatibility commit (84bd8848).

F1: ``parse_duration`` refused a long digit run with no unit by trying every split of it (quadratic; 200,000
digits took ~10 minutes). F2: compact one-line JSON text no longer loaded through ``as_config``. F3: an
integer past Python's 4300 digits escaped ``load_config`` as a bare ValueError. F4: durations past Go's int64
nanoseconds were read, where Go's ``time.ParseDuration`` refuses them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate import yamlload
from kvgate.config.director import as_config
from kvgate.config.gateway import GatewayConfigError, load_gateway_yaml
from kvgate.config.picker import load_config
from kvgate.scheduling.framework import ConfigError, parse_duration

DOC = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [{"type": "queue-scorer"}],
}

# --- F2 ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(DOC, separators=(",", ":")),
        json.dumps(DOC),
        "{kind: EndpointPickerConfig, plugins: [{type: queue-scorer}]}",
    ],
)
def test_f2_one_line_json_or_yaml_text_loads_through_as_config(text: str) -> None:
    assert "\n" not in text
    assert as_config(text).plugins[0].type == "queue-scorer"


def test_f2_a_mistyped_policy_name_is_still_named() -> None:
    with pytest.raises(ConfigError, match=r"'kvgatee' is neither a policy \(.*\) nor a file"):
        as_config("kvgatee")


# --- F3 ----------------------------------------------------------------------------------------------------

_DIGITS = "9" * 5000
_EPC = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
    "- type: queue-scorer\nschedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: queue-scorer\n"
    f"    weight: {_DIGITS}\n"
)


def test_f3_a_5000_digit_integer_is_a_config_error_naming_its_key(tmp_path: Path) -> None:
    f = tmp_path / "epc.yaml"
    f.write_text(_EPC)
    for source in (_EPC, str(f), f):
        with pytest.raises(
            ConfigError, match=r"^schedulingProfiles\[0\]\.plugins\[0\]\.weight: an integer of 5000 digits"
        ) as e:
            load_config(source)
        assert e.value.key == "schedulingProfiles[0].plugins[0].weight"


def test_f3_the_gateway_file_names_the_key_too(tmp_path: Path) -> None:
    gw = tmp_path / "gw.yaml"
    gw.write_text(f"limits:\n  requestTimeoutSeconds: -{_DIGITS}\n")
    with pytest.raises(
        GatewayConfigError, match=r"^limits\.requestTimeoutSeconds: an integer of 5000 digits"
    ):
        load_gateway_yaml(str(gw))


def test_f3_integers_int_reads_still_load() -> None:
    limit = sys.get_int_max_str_digits()
    assert yamlload.safe_load(
        f"a: {'9' * limit}\nb: [1_000, 0x{'f' * (limit + 1)}, 0{'7' * (limit + 1)}]\n"
    ) == {
        "a": int("9" * limit),
        "b": [1000, int("f" * (limit + 1), 16), int("7" * (limit + 1), 8)],
    }


# --- F4 ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2562047h47m16.854775807s", 9223372036.854775807),  # (Go's largest Duration)
        ("9223372036854775807ns", 9223372036.854775807),
        ("-9223372036854775808ns", -9223372036.854775808),  # (Go's smallest)
        ("1h2m3.5s", 3723.5),
        (".5ns.6ns", 0.0),  # (Go truncates each term to whole nanoseconds)
        ("1.0000000000000000000000001s", 1.0),
    ],
)
def test_f4_durations_go_reads(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "text",
    ["2562048h", "10000000000000000000h", "9223372036854775808ns", "-9223372036854775809ns", "999999999999s",
     "2562047h47m16.854775808s", "9" * 30],
)  # fmt: skip
def test_f4_a_duration_past_gos_int64_nanoseconds_is_refused(text: str) -> None:
    assert parse_duration(text) is None


def test_f4_a_config_value_past_int64_names_its_key() -> None:
    doc = dict(DOC, saturationDetector={"metricsStalenessThreshold": "2562048h"})
    with pytest.raises(
        ConfigError, match=r"^saturationDetector\..*metricsStalenessThreshold: must be a duration"
    ):
        as_config(doc)


# --- F1 ----------------------------------------------------------------------------------------------------

# 1,000,000 characters (the config file cap): the quadratic regex needed hours for each (16,000 digits took
# 5.9 s; 200,000 about 10 minutes); a linear parse takes milliseconds. The limit is no timing claim: it only
# ends a run that would otherwise hold CI for hours.
_LONG = """
from kvgate.scheduling.framework import parse_duration
n = 1_000_000
for text in ("1" * n + "x", "1" * n + ".x", "1" * n, "." + "1" * n + "x", "1s" * (n // 2) + "x"):
    assert parse_duration(text) is None, text[-3:]
print("ok")
"""


def test_f1_a_million_character_value_is_refused_without_backtracking() -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _LONG],
            env={"PYTHONPATH": src},
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parse_duration ran over 120 s on 1,000,000 characters (backtracking)")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
