"""Pieces of the live comparison that need no routers: Prometheus parsing, medians, subprocesses."""

from __future__ import annotations

import sys

import pytest

from kvgate.bench import live, procs

PROM = """# HELP vllm:prefix_cache_hits_total Prefix cache hits, in tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="sim-model"} 1200.0
vllm:prefix_cache_hits_total{engine="1",model_name="sim-model"} 300.0
vllm:prefix_cache_queries_total{model_name="sim-model"} 2000
vllm:num_requests_waiting{model_name="sim-model"} 3
vllm:num_requests_waiting_by_reason{reason="capacity"} 99
vllm:kv_cache_usage_perc 0.25
"""


def test_parse_prom_sums_label_sets_and_matches_whole_names() -> None:
    got = live.parse_prom(PROM, (live.HITS, live.QUERIES, live.WAITING, live.KV, live.RUNNING))
    assert got == {
        live.HITS: 1500.0,
        live.QUERIES: 2000.0,
        live.WAITING: 3.0,
        live.KV: 0.25,
        live.RUNNING: 0.0,
    }


def test_median_rows_per_router() -> None:
    rows = [
        {"router": "a", "policy": "a", "ttft_p90": v, "errors": e, "prefix_hit_rate": None}
        for v, e in ((1.0, 0), (3.0, 2), (2.0, 1))
    ] + [{"router": "b", "policy": "b", "ttft_p90": 5.0, "errors": 0, "prefix_hit_rate": 0.5}]
    med = {r["router"]: r for r in live.median_rows(rows)}
    assert med["a"]["ttft_p90"] == 2.0 and med["a"]["errors"] == 1 and med["a"]["rounds"] == 3
    assert med["b"]["prefix_hit_rate"] == 0.5 and med["b"]["rounds"] == 1


async def test_procs_start_reads_ready_line_and_stops_process_group() -> None:
    code = "import time; print('warming', flush=True); print('ready on 4242', flush=True); time.sleep(60)"
    p, m = await procs.start("child", [sys.executable, "-c", code], r"ready on (\d+)", wait_s=30)
    assert m[0].group(1) == "4242" and p.alive
    await p.stop(grace=5)
    assert not p.alive and "warming" in p.tail()


async def test_procs_start_reports_early_exit() -> None:
    with pytest.raises(RuntimeError, match="exited"):
        await procs.start("child", [sys.executable, "-c", "print('boom')"], r"never", wait_s=30)
