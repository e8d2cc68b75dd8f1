"""Review qa36c F6: ``kvgate bench workers`` writes the command, the offered load and a per-set summary
(p90 geomean, its ratio to 1 worker, mean hit rate) with its table, so the docs' figures can be re-derived
from the file and compared (it wrote the runs' rows only)."""

from __future__ import annotations

from pathlib import Path

from kvgate.bench import workers_sim


def test_the_written_table_names_command_load_and_summary(tmp_path: Path) -> None:
    argv = ["--set", "tuning", "--modes", "1,gossip", "--capacities", "a=5", "--duration", "8", "--warmup",
            "2", "--out", str(tmp_path)]  # fmt: skip
    assert workers_sim.main(argv) == 0
    text = (tmp_path / "fleet-workers.md").read_text()
    assert "`kvgate bench workers --set tuning --modes 1,gossip --capacities a=5 --duration 8" in text
    assert "a 4.000 req/s" in text  # 0.8 x 5
    summary = [line for line in text.splitlines() if line.startswith("| tuning | ")]
    one = [line for line in summary if "| 1 / - / - | 3 |" in line]
    gossip = [line for line in summary if "| 2 / shared / per worker + gossip | 3 |" in line]
    assert len(one) == 1 and "| 1.000x |" in one[0], text
    assert len(gossip) == 1 and gossip[0].split("|")[5].strip().endswith("x"), text
