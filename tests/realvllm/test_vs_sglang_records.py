"""``scripts/realvllm/vs_sglang.py``'s per-request records of vLLM's own histograms: no vLLM needed."""

from __future__ import annotations

from realvllm.test_vs_sglang_target import _script

LABELS = '{engine="0",model_name="tiny"}'


def page(queries: float, hits: float, queue: tuple[float, int], prefill: tuple[float, int],
         ttft: tuple[float, int]) -> str:  # fmt: skip
    lines = [f"vllm:prefix_cache_queries_total{LABELS} {queries}",
             f"vllm:prefix_cache_hits_total{LABELS} {hits}"]  # fmt: skip
    for name, (total, n) in (("vllm:request_queue_time_seconds", queue),
                             ("vllm:request_prefill_time_seconds", prefill),
                             ("vllm:time_to_first_token_seconds", ttft)):  # fmt: skip
        lines += [f"# TYPE {name} histogram", f'{name}_bucket{{le="0.1",engine="0",model_name="tiny"}} {n}',
                  f"{name}_sum{LABELS} {total}", f"{name}_count{LABELS} {n}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def test_a_request_gets_its_servers_queue_prefill_and_ttft() -> None:
    vs = _script()
    idle = vs.histogram_sums(page(0, 0, (0.0, 0), (0.0, 0), (0.0, 0)))
    s0 = (100.0, 0.0, *vs.histogram_sums(page(100, 0, (0.5, 3), (1.0, 3), (2.0, 3))))
    s0b = (2100.0, 1920.0, *vs.histogram_sums(page(2100, 1920, (0.502, 4), (1.03, 4), (2.045, 4))))
    s1 = (0.0, 0.0, *idle)
    rec = vs.placed([s0, s1], [s0b, s1])
    assert rec["server"] == 0 and rec["prompt_tokens"] == 2000 and rec["hit_tokens"] == 1920
    assert round(rec["v_queue_ms"], 6) == 2.0
    assert round(rec["v_prefill_ms"], 6) == 30.0
    assert round(rec["v_ttft_ms"], 6) == 45.0
    # The buckets are not sums: only _sum and _count lines count.
    assert vs.histogram_sums(page(0, 0, (0.5, 3), (0.0, 0), (0.0, 0)))[:2] == (0.5, 3.0)


def test_a_late_or_doubled_observation_is_not_charged_to_the_request() -> None:
    vs = _script()
    before = (100.0, 0.0, *vs.histogram_sums(page(100, 0, (0.5, 3), (1.0, 3), (2.0, 3))))
    # The prefix counters moved, the finish-time histograms not yet (queue, prefill), TTFT by one.
    after = (2100.0, 0.0, *vs.histogram_sums(page(2100, 0, (0.5, 3), (1.0, 3), (2.1, 4))))
    rec = vs.placed([before], [after])
    assert "v_queue_ms" not in rec and "v_prefill_ms" not in rec and round(rec["v_ttft_ms"], 6) == 100.0
    # Two at once (the previous request's came late): charged to neither.
    after2 = (4100.0, 0.0, *vs.histogram_sums(page(4100, 0, (0.6, 5), (1.2, 5), (2.2, 5))))
    assert "v_queue_ms" not in vs.placed([after], [after2])


def test_the_filtered_get_names_every_series_it_reads() -> None:
    vs = _script()
    for _, metric in vs.SERVER_SIDE:
        for part in ("sum", "count"):
            assert f"name%5B%5D={metric}_{part}".replace(":", "%3A") in vs.COUNTERS_PATH


def test_progress_line() -> None:
    vs = _script()
    recs = [{"send": 0.0, "c_first": 0.05, "server": 0, "prompt_tokens": 2000, "hit_tokens": 1920},
            {"send": 0.0, "c_first": 0.15, "server": 1, "prompt_tokens": 2000, "hit_tokens": 0}]  # fmt: skip
    assert vs.progress("kvgate", 2, 40, recs) == "  .. kvgate: 2/40 requests, mean TTFT so far 100 ms, 1 hits"
