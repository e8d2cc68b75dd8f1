"""Review rev-b32 F2-F4: the docs around bff53adf's default-profile flip (`coldSpread` +
`coldSpreadDecodeHeavy` on) say what the code and the committed figures say. All fail on ad5491cb:
docs/precise-prefix.md's precise profile example lacked both keys (F2); docs/scheduling.md's `coldSpread`
bullet still said "so it is off by default" / "So it stays off" (F3); docs/benchmarks/fleet-multiturn-s32.md
and docs/benchmarks.md named c / 105, 110 and 111 as seeds where sglang's model's p90 leaves the 300 ms
band, and c / 105 for the flipped default, against their own table (F4).

Text only: no simulation, no server. Whitespace is normalised so a rewrap does not matter."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kvgate.config.policies import precise_policy

ROOT = Path(__file__).resolve().parents[1]
S32 = ROOT / "docs" / "benchmarks" / "fleet-multiturn-s32.md"
BAND_MS = 300  # the table's threshold (`gap_attr_s32.py c 6.992 104 113 BEFORE sglang-cache-aware --at=300`)


def _flat(path: Path) -> str:
    return " ".join(path.read_text().split())


def _cost(doc: dict[str, Any]) -> dict[str, Any]:
    (p,) = [p for p in doc["plugins"] if p["type"] == "kvgate-cost-scorer"]
    return dict(p.get("parameters") or {})


def test_precise_prefix_docs_default_profile_example_is_what_kv_events_auto_runs() -> None:
    text = (ROOT / "docs" / "precise-prefix.md").read_text()
    section = text.split("### kvgate's default profile on precise matches", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    example = _cost(yaml.safe_load(block.group(1)))
    want = _cost(precise_policy("", bind=False))
    assert want["coldSpread"] is True and want["coldSpreadDecodeHeavy"] is True
    assert want.items() <= example.items(), f"example {example} lacks {want}"


def test_scheduling_docs_cold_spread_bullet_does_not_call_it_off_by_default() -> None:
    text = (ROOT / "docs" / "scheduling.md").read_text()
    bullet = text.split("- **Cold work away from reused caches (`coldSpread`", 1)[1].split("\n- **", 1)[0]
    bullet = " ".join(bullet.split())
    assert "so it is off by default" not in bullet
    assert "So it stays off (" not in bullet
    assert "the default turns it on only with `coldSpreadDecodeHeavy`" in bullet


def _rows() -> dict[int, list[str]]:
    """fleet-multiturn-s32.md's per-seed table: seed -> [default p90, sglang p90, flipped p90, default n,
    sglang n, flipped n, 10% mark] (n: measured requests at or over 300 ms)."""
    rows: dict[int, list[str]] = {}
    for line in S32.read_text().splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:]
    assert sorted(rows) == list(range(104, 114))
    return rows


def _out_of_band(col_p90: int, col_n: int) -> set[int]:
    out = set()
    for seed, cells in _rows().items():
        below = int(cells[col_n]) < int(cells[6])
        assert below == (float(cells[col_p90]) < BAND_MS), (seed, cells)  # the table agrees with itself
        if below:
            out.add(seed)
    return out


def _named(text: str, lead: str) -> set[int]:
    m = re.search(re.escape(lead) + r" c / ([0-9, and]+)", text)
    assert m is not None, lead
    return {int(s) for s in re.findall(r"[0-9]+", m.group(1))}


def test_the_band_edge_reading_names_the_seeds_its_table_puts_out_of_the_band() -> None:
    sglang_out = _out_of_band(1, 4)
    assert sglang_out == {105}
    assert _named(_flat(S32), "sglang's model does so on") == sglang_out
    assert _named(_flat(ROOT / "docs" / "benchmarks.md"), "sglang's model does so on") == sglang_out
    flipped_out = _out_of_band(2, 5)
    assert flipped_out == {110}
    assert _named(_flat(S32), "Its p90 leaves the band on") == flipped_out
