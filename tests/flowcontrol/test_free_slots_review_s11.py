"""Review s11-fc L1 (the reviewer's tests): ``free_slots`` in closed form (4bf1684) against the session
10 loop it replaced.

The commit says "same answers as the loop"; its own test samples 50,000 random inputs, which almost
never land on a boundary (where sum_{k<=F} q^k is 1 / miss to the last bit). On boundaries the closed
form's log / ceil rounding gives F one too small or too large. The failing tests below pick inputs
where the loop and exact arithmetic (``fractions``, on the same float q and miss) agree and the
closed form does not; ``test_matches_the_loop_off_boundaries`` is a guard (it passes) over the edge
cases the brief asked for (cap 0/1/negative, zero / NaN / inf rates, huge values, overflow).
"""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from kvgate.flowcontrol.controller import free_slots

from .test_free_slots_s11 import loop  # the session 10 loop, verbatim


def exact(q: float, miss: float, cap: int) -> int:
    """The docstring's definition in exact arithmetic on the float q and miss: the least F <= cap with
    sum_{k <= F} q^k >= 1 / miss."""
    qq, need = Fraction(q), 1 / Fraction(miss)
    s, t, f = Fraction(1), Fraction(1), 0
    while f < cap and s < need:
        f += 1
        t *= qq
        s += t
    return f


def test_boundary_examples() -> None:
    # q = 1 (finishes exactly as fast as the takes): 5 x 0.19999999999999998 < 1, so F = 5; the closed
    # form computes need = 1 / miss, which rounds to 5.0, and answers 4
    assert loop(2.0, 2.0, 0.19999999999999998, 64) == exact(1.0, 0.19999999999999998, 64) == 5
    assert free_slots(2.0, 2.0, 0.19999999999999998, 64) == 5
    # q = 3: 1 + 3 = 4 and 4 x 0.24999999999999997 < 1, so F = 2; the closed form answers 1
    assert loop(1.0, 3.0, 0.24999999999999997, 64) == exact(3.0, 0.24999999999999997, 64) == 2
    assert free_slots(1.0, 3.0, 0.24999999999999997, 64) == 2
    # within the reserve's own range of miss (0.01..0.1): q = 1.25, F = 7
    m = 0.050398506255210106
    assert loop(1.0, 1.25, m, 4096) == exact(1.25, m, 4096) == 8
    assert free_slots(1.0, 1.25, m, 4096) == 8


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    q=st.sampled_from([1.0, 1.001, 1.01, 1.1, 1.25, 1.5, 2.0, 3.0]) | st.floats(1.0, 3.0),
    f=st.integers(1, 12),
    nudge=st.sampled_from([-1, 0, 1]),
)
@example(q=3.0, f=1, nudge=-1)
def test_on_boundaries_where_the_loop_is_exact_the_closed_form_agrees(q: float, f: int, nudge: int) -> None:
    """miss = 1 / sum_{k <= f} q^k, give or take an ulp: the inputs where F flips. Wherever the old
    loop gives the exact answer, the closed form must too (it claims the loop's answers)."""
    miss = 1.0 / sum(q**k for k in range(f + 1))
    for _ in range(abs(nudge)):
        miss = math.nextafter(miss, math.inf if nudge > 0 else 0.0)
    assume(0.0 < miss < 1.0)
    want = loop(1.0, q, miss, 4096)
    assume(want == exact(q, miss, 4096))
    assert free_slots(1.0, q, miss, 4096) == want, (q, f, miss)


finite = st.floats(min_value=1e-300, max_value=1e300)
odd = st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308])


@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    take=finite | odd,
    give=finite | odd,
    miss=st.floats(0.001, 0.999) | st.sampled_from([math.nan, 1.0, 2.0, math.inf, 0.01, 0.05, 0.1]),
    cap=st.integers(-3, 600) | st.sampled_from([0, 1]),
)
@example(take=1.0, give=0.5, miss=0.5, cap=54)  # (on the limit: skipped, see below)
@example(take=1.0, give=0.9, miss=0.1, cap=600)
def test_matches_the_loop_off_boundaries(take: float, give: float, miss: float, cap: int) -> None:
    """A guard (passes on main): cap 0/1/negative, zero / NaN / inf rates, huge and tiny ratios (q
    overflowing to inf or underflowing to 0), NaN and >= 1 miss. (miss <= 0 is left out: the reserve's
    miss is at least RESERVE_MISS_FLOOR; there the loop stops early on inf * 0 = NaN, the closed form
    answers cap.) Off boundaries: also not where the sum's limit 1 / (1 - q) (q < 1) is 1 / miss to
    within rounding, where the float loop answers either way (1 + ... + 2^-53 rounds to 2.0) and exact
    arithmetic decides: ``test_on_the_sums_limit_exact_arithmetic_decides`` (reviews s20-qa, s20-fixes-a
    L4: this guard failed at random on such plain inputs)."""
    if take > 0 and math.isfinite(take) and give > 0 and 0.0 < miss < 1.0:
        q = give / take
        assume(not (0.0 < q < 1.0 and abs((1.0 - q) / miss - 1.0) <= 1e-9))
    assert free_slots(take, give, miss, cap) == loop(take, give, miss, cap)


def test_on_the_sums_limit_exact_arithmetic_decides() -> None:
    """Where 1 / (1 - q) is 1 / miss to within rounding, the docstring's definition (``exact``) decides,
    on both sides of the limit: no F reaches it (q = 0.5, miss = 0.5: every partial sum is below 2), or
    one far out (q = 0.9, miss = 0.1 as floats: the limit a rounding step above 10)."""
    assert free_slots(1.0, 0.5, 0.5, 54) == exact(0.5, 0.5, 54) == 54
    assert free_slots(1.0, 0.5, 0.5, 600) == exact(0.5, 0.5, 600) == 600
