"""The suite's Hypothesis profile (tests/conftest.py): ``make test``, ``.ci/run`` and land.sh draw the same
examples on every run (``gate``: derandomized, no example database), so a counterexample nobody introduced
cannot refuse a submission; ``make fuzz`` draws fresh ones (``fuzz``). Before (6d96a979), every run drew
new random examples in 38 test files."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _draws() -> list[int]:
    seen: list[int] = []

    @given(st.integers())
    def draw(x: int) -> None:
        seen.append(x)

    draw()
    return seen


def test_the_default_suite_draws_the_same_examples_every_run() -> None:
    if os.environ.get("KVGATE_HYPOTHESIS_PROFILE", "gate") != "gate":
        return  # (asked for another profile: nothing of the default run to check)
    assert settings.get_current_profile_name() == "gate"
    assert settings.default is not None
    assert settings.default.derandomize and settings.default.database is None
    assert settings.default.deadline is None  # (a loaded machine's timing fails nothing)
    first, second = _draws(), _draws()
    assert len(first) > 10 and first == second


def test_fuzz_draws_fresh_examples_and_make_fuzz_runs_it() -> None:
    fuzz = settings.get_profile("fuzz")
    assert not fuzz.derandomize and fuzz.database is not None and fuzz.print_blob
    make = (ROOT / "Makefile").read_text()
    target = re.search(r"^fuzz:.*\n((?:\t.*\n)+)", make, re.M)
    assert target is not None, "no `make fuzz` target"
    assert "--hypothesis-profile=fuzz" in target.group(1) and "-m 'hypothesis" in target.group(1)
