"""Review s10-fc-a (#15, commits 6bdea0f / 969f250): the per-flow arrival table of
``fairShareRunningReserve`` (``FlowController.arrived``) is keyed by client-supplied fairness ids.

(Adapted from /work/team/reviews/s10-fc-a-tests/test_arrival_table_s10_review.py.)
Each test fails on main (917fe71)."""

from __future__ import annotations

from typing import Any

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import RATE_FLOWS, FlowController
from kvgate.scheduling.types import InferenceRequest


def req(rid: str, flow: str) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow)


def controller(**kw: Any) -> FlowController:
    base: dict[str, Any] = {
        "fair_share_headroom": 0.75,
        "fair_share_ttft_target": 0.05,
        "fair_share_running_reserve": True,
    }
    return FlowController(FlowControlConfig(**{**base, **kw}))


def _spray(ctl: FlowController, n: int, seconds: float) -> None:
    for i in range(n):
        ctl.arrived(req(f"s{i}", f"sybil{i}"), i * seconds / n)


def test_sprayed_ids_are_dropped_once_decayed() -> None:
    """docs/flowcontrol.md: 'an id with less than 0.01 of an arrival left, about 23 s after its last,
    is dropped): memory grows with the ids seen in the last ~23 s'. After a spray of 50,000 ids in
    5 s and 95 s of one flow sending once a second, every sprayed id has < 0.01 left (exp(-19)), but
    the table keeps all 50,000 until the 250 s re-base (the doubling cap, 65,536, is never reached)."""
    ctl = controller()
    _spray(ctl, 50_000, 5.0)
    t = 5.0
    while t < 100.0:
        ctl.arrived(req(f"q{t}", "quiet"), t)
        t += 1.0
    assert len(ctl._arrived) < 1_000, len(ctl._arrived)


class _CountingDict(dict):  # type: ignore[type-arg]
    scanned = 0

    def values(self):  # type: ignore[no-untyped-def, override]
        _CountingDict.scanned += len(self)
        return super().values()


def test_arrivals_after_a_spray_do_not_scan_the_whole_table() -> None:
    """969f250 / docs: 'the scans cost O(1) per arrival'. The ``_rate_flows`` recount in ``arrived``
    scans the whole table every RATE_FLOWS_EVERY_S (0.1 s) of arrivals: with the 50,000 stale ids of
    a spray kept (previous test), each of 100 later arrivals (1 a second) scans all 50,000: 5,000,000
    entries for 100 requests, for up to 250 s after the spray."""
    ctl = controller()
    _spray(ctl, 50_000, 5.0)
    ctl._arrived = _CountingDict(ctl._arrived)
    _CountingDict.scanned = 0
    t = 60.0
    for i in range(100):
        ctl.arrived(req(f"q{i}", "quiet"), t + i)
    assert _CountingDict.scanned <= 100 * 1_000, _CountingDict.scanned


def test_the_table_has_a_hard_bound() -> None:
    """Bounded memory (team brief): a client that sends a fresh fairness id per request grows the
    table by one entry per request (arrived() runs before admission, so 429-rejected requests count
    too), the cap doubling at each re-base: 300,000 ids in 10 s leave 300,000 entries (and each key
    is the raw header value, of any length). Expect a hard cap (e.g. a few x RATE_FLOWS, the excess
    folded into one overflow bucket)."""
    ctl = controller()
    _spray(ctl, 300_000, 10.0)
    assert len(ctl._arrived) <= 4 * RATE_FLOWS, len(ctl._arrived)


# -- fixes beyond the reviewer's three tests (s10-fc-a F3, F6) ----------------------------------------


def test_long_ids_take_a_bounded_key() -> None:
    """F3: the table's keys are the raw header values: a 4 KB id per request keeps 4 KB per entry."""
    ctl = controller()
    long_id = "x" * 4096
    ctl.arrived(req("a", long_id), 0.0)
    assert max(len(k) for k in ctl._arrived) <= 256
    for i in range(100):  # it is still counted as itself, and can be over its share
        ctl.arrived(req(f"a{i}", long_id), 0.01 * i)
    for i, f in enumerate(("q1", "q2", "q3")):
        ctl.arrived(req(f, f), 2.0 + 0.2 * i)
    other = "x" * 4095 + "y"  # (another id with the same first 4,095 characters is another key)
    ctl.arrived(req("b", other), 2.6)
    assert ctl.rate_over(long_id)
    assert not ctl.rate_over("q1") and not ctl.rate_over(other)


def test_ids_past_the_cap_are_over_as_a_group() -> None:
    """F3: at the cap, new ids share one entry; a spray's ids past it are judged by that entry (held
    back as a group), not let through as unknown."""
    ctl = controller()
    _spray(ctl, 4 * RATE_FLOWS + 5_000, 2.0)
    assert ctl.rate_over(f"sybil{4 * RATE_FLOWS + 4_999}")  # (folded into the shared entry)


def test_an_arrival_in_the_past_counts_as_decayed() -> None:
    """F6: an arrival older than the base time counted as a fresh one (weight clamped to 1)."""
    ctl = controller()
    ctl.arrived(req("a", "a"), 100.0)
    ctl.arrived(req("b", "b"), 50.0)  # 50 s late: exp(-10) of an arrival, not 1
    assert ctl._arrived["b"] < 1e-3 * ctl._arrived["a"]


def test_a_clock_step_back_does_not_freeze_the_count_of_flows_sending() -> None:
    """F6: ``_rate_flows_at`` kept the newest time: a step back by D froze the count for D seconds."""
    ctl = controller()
    ctl.arrived(req("a", "a"), 100.0)
    assert ctl._rate_flows == 1
    for i, f in enumerate(("b", "c", "d")):
        ctl.arrived(req(f, f), 40.0 + i)  # the clock stepped back 60 s
    ctl.arrived(req("e", "e"), 43.0)
    assert ctl._rate_flows >= 2
