"""The flow-control bench's reading of requests neither served nor shed when the run ends (fc28, #15 goal 3):
for every arm alike a miss in every SLO figure and, in a TTFT percentile, later than every request answered.
Before fc28 the attainment already counted them as misses, but the p50 / p90 TTFT left them out, so an arm
that leaves requests unanswered read faster than one that answers them late. No process, no timing."""

from __future__ import annotations

import math

from kvgate.bench import flowcontrol_bench as fb


def _run(arm: str, answered: int, unanswered: int) -> fb.Run:
    run = fb.Run(arm)
    run.outcomes = [fb.Outcome(fb.QUIET[0], 1.0, ttft=0.1) for _ in range(answered)]
    run.outcomes += [fb.Outcome(fb.QUIET[0], 1.0) for _ in range(unanswered)]  # no first token, no 429/503
    run.outcomes.append(fb.Outcome(fb.QUIET[0], 1.0, status=429))  # shed: an answer, no TTFT
    return run


def test_unanswered_requests_are_misses_and_later_than_every_answer_for_every_arm() -> None:
    for arm in ("none", "reference", "kvgate", "kvgate-reserve-feasible"):
        r = fb.summarize(_run(arm, answered=8, unanswered=2), 0.0)
        quiet = r["quiet"]
        assert quiet["p90_ttft_s"] == math.inf  # 2 of 10 never answered: the p90 is past the run
        assert quiet["p50_ttft_s"] == 0.1
        assert (quiet["requests"], quiet["shed"], quiet["unfinished"], r["unanswered"]) == (11, 1, 2, 2)
        assert r["slo_attainment"] == 8 / 11 and quiet["slo_attainment"] == 8 / 11  # both kinds missed
        assert r["shed"] == 1 and r["shed_rate"] == 1 / 11  # the shed rate: refusals only


def test_a_percentile_among_the_answered_ones_is_unchanged_by_the_rule() -> None:
    ttft = [0.01 * i for i in range(1, 20)]  # 19 answered, 1 not: p90 at position 17.1 of 0..19
    run = fb.Run("kvgate")
    run.outcomes = [fb.Outcome(fb.QUIET[1], 1.0, ttft=t) for t in ttft] + [fb.Outcome(fb.QUIET[1], 1.0)]
    got = fb.summarize(run, 0.0)["quiet"]["p90_ttft_s"]
    assert math.isclose(got, 0.18 + 0.1 * 0.01)
    assert fb.ttft_pct(ttft, 0, 90) == fb.pct(ttft, 90)  # none unanswered: the plain percentile
