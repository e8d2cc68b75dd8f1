"""Review rev-c31 F1/F2: figures in docs/benchmarks/flowcontrol.md "Session 31" against the JSON they came
from (docs/benchmarks/flowcontrol-confirm-s31/). Fail on beb11387: the shipped arm's extra shed in
`--ttl 30` 4 x 128 seed 96 is 0.75 points (34 of 4553), the docs said 0.52; the 24-cell mean margin of
packCertainMisses is +0.2306 (0.23065 rounds down), the docs said +0.2307; its mean gain over the shipped
arm in 2 x 16 on seeds 94-96 is +0.003 (0.00345), the docs said +0.004.

Text and JSON only: no server, no subprocess. Whitespace is normalised so a rewrap does not matter."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks" / "flowcontrol.md"
RUNS = ROOT / "docs" / "benchmarks" / "flowcontrol-confirm-s31"
ARM = "kvgate-reserve-feasible"  # the shipped arm; +pack / +alone its late-pick keys


def _doc() -> str:
    return " ".join(DOC.read_text().split())


def _runs(name: str) -> dict:
    return json.loads((RUNS / name).read_text())["runs"]


def _cells(pattern: str) -> list[dict]:
    return [json.loads(f.read_text())["runs"] for f in sorted(RUNS.glob(pattern))]


def test_extra_shed_points_match_the_json() -> None:
    r = _runs("ttl30_4x128_s96.json")
    points = 100 * (r[f"{ARM}/flood"]["shed_rate"] - r["reference/flood"]["shed_rate"])
    said = [float(x) for x in re.findall(r"([0-9.]+) points more shed", _doc())]
    assert said, "no 'points more shed' figure found"
    assert all(abs(x - points) < 0.005 for x in said), (said, round(points, 2))


def test_the_24_cell_mean_margins_match_the_json() -> None:
    cells = _cells("ttl*_s*.json")
    assert len(cells) == 24
    text = _doc()
    for suffix in ("+pack", "+alone"):
        margins = [r[f"{ARM}{suffix}/flood"]["slo_attainment"] - r["reference/flood"]["slo_attainment"]
                   for r in cells]  # fmt: skip
        want = f"{sum(margins) / len(margins):+.4f}"
        assert want in text, (suffix, want)


def test_the_2x16_gains_over_shipped_on_the_decisive_seeds_match_the_json() -> None:
    cells = [c for s in (94, 95, 96) for c in _cells(f"ttl*_2x16_s{s}.json")]
    assert len(cells) == 6
    said = []
    for suffix, key in (("+pack", "packCertainMisses"), ("+alone", "prefillAlonePick")):
        gains = [
            r[f"{ARM}{suffix}/flood"]["slo_attainment"] - r[f"{ARM}/flood"]["slo_attainment"] for r in cells
        ]
        said.append(f"`{key}` {min(gains):+.3f} to {max(gains):+.3f}, mean {sum(gains) / len(gains):+.3f}")
    assert "; ".join(said) in _doc(), said
