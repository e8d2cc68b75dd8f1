"""`kvgate bench flowcontrol --critical-slo / --critical-burst` (fc26, review s25-rev-fc25 F4): the burst adds
critical arrivals in its window only and leaves every other arrival as it was; ``late`` counts what the
critical requests that missed paid. No process is started; no timing."""

from __future__ import annotations

import random

from kvgate.bench import flowcontrol_bench as fb


def _key(a: fb.Arrival) -> tuple[float, str, int, int]:
    return (a.at, a.tenant, a.prompt, a.output)


def test_the_burst_adds_critical_arrivals_in_its_window_and_changes_nothing_else() -> None:
    plain = fb.Mix(2.0, "flood", 30.0).arrivals(random.Random(7))
    burst = fb.Mix(2.0, "flood", 30.0, critical_burst=20.0).arrivals(random.Random(7))
    added = sorted(set(map(_key, burst)) - set(map(_key, plain)))
    assert sorted(map(_key, plain)) == sorted(set(map(_key, burst)) - set(added))
    assert added and all(t == fb.CRITICAL and 5.0 <= at % 10.0 < 6.0 for at, t, _, _ in added)


def test_late_counts_the_critical_requests_that_missed() -> None:
    run = fb.Run("x")
    run.slos[fb.CRITICAL] = 0.3
    run.outcomes = [
        fb.Outcome(fb.CRITICAL, 0.0, ttft=0.1),  # hit
        fb.Outcome(fb.CRITICAL, 0.0, ttft=2.0),  # late
        fb.Outcome(fb.CRITICAL, 0.0, ttft=12.0),  # late, over 10 s
        fb.Outcome(fb.CRITICAL, 0.0, status=503),  # shed
        fb.Outcome(fb.BATCH, 0.0, ttft=20.0),  # another tenant
    ]
    got = fb.late(run, fb.CRITICAL)
    assert (got["requests"], got["missed"], got["shed"], got["missed_over_10s"]) == (4, 3, 1, 1)
    assert got["missed_max_ttft_s"] == 12.0 and got["slo_s"] == 0.3
    assert fb.summarize(run, 0.0)["bands"]["critical (10)"]["slo_attainment"] == 0.25
