"""`kvgate demo --quick`: real subprocesses (simulated fleet, gateway) on 127.0.0.1, end to end."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

pytest.importorskip("kvgate.gateway.server")
pytest.importorskip("kvgate.sim.server")


def test_demo_quick_prints_table_and_kvgate_keeps_prefixes_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvgate.bench import demo

    out = tmp_path / "demo.json"
    assert demo.main(["--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "round robin" in text and "kvgate" in text and "prefix-cache hit" in text
    assert "curl" not in text  # only with --keep
    rows = orjson.loads(out.read_bytes())["rows"]
    rr, kv = rows["round robin"], rows["kvgate"]
    for row in (rr, kv):
        assert row["errors"] == 0 and row["ok"] > 20
        assert row["ttft_p90"] is not None
    # 16 customers x 3k-token prompts fit the fleet only if partitioned: affinity must show in the
    # replicas' own counters (latency is not asserted: this machine is shared).
    assert kv["prefix_hit_rate"] > rr["prefix_hit_rate"] + 0.2
