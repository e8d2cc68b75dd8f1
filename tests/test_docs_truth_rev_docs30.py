"""rev-docs30: docs truth checks for session 30 (each fails on main cb79cb00, the review's read).

Text only: no server, no subprocess. Whitespace is normalised so a rewrap does not matter.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _text(rel: str) -> str:
    return " ".join((ROOT / rel).read_text().split())


def test_d3_readme_names_the_optional_compiled_build() -> None:
    readme = _text("README.md")
    assert "make compiled" in readme and "make pure" in readme


def test_d4_gateway_docs_say_first_data_event_where_the_held_head_decides() -> None:
    gw = _text("docs/gateway.md")
    assert "another endpoint after an upstream closed before its first body byte" not in gw
    assert "a stream that fails after its first byte is cut" not in gw


def test_d5_d6_d7_changelog_names_what_exists() -> None:
    log = _text("CHANGELOG.md")
    assert 'docs/gateway.md "Held head"' not in log
    assert "Not covered: a picker that `--kv-events auto` chooses" not in log
    assert "fails on 6f204f9c" not in log  # (tok30's pre-rebase commit; main's is 947449f9)


def test_d8_every_cost_scorer_parameter_is_in_schedulings_list() -> None:
    src = (ROOT / "src/kvgate/scheduling/plugins/kvgate_cost.py").read_text()
    keys = set(re.findall(r'params\.get_\w+\("(\w+)"', src))
    assert "coldSpreadDecodeHeavy" in keys
    doc = _text("docs/scheduling.md")
    start = doc.index("Parameters: `prefixPluginRef`")
    listed = doc[start : doc.index("What it does not model", start)]
    assert not {k for k in keys if f"`{k}`" not in listed}


def test_d9_epp_fail_open_is_the_best_standing() -> None:
    epp = _text("docs/epp.md")
    assert "to all of them when every one is (the same rule as `kvgate serve`'s, which also weighs" not in epp


def test_d16_compiled_build_not_called_the_same_behaviour() -> None:
    assert "it is the same behaviour by the tests above" not in _text("docs/benchmarks/gateway.md")
