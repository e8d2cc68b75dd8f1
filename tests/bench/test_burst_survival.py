"""``scripts/burst_survival.py``'s attribution of blocks written at a replica to a window between two
bursts: a prompt's uncached blocks at its first schedule, an output's pro rata over its decoding, a
session turn's prompt as a new session's or a recomputed context's by its size, other replicas ignored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from burst_survival import NEW_SESSION_TOKENS, Write, writes_between


def test_writes_are_charged_to_the_window_they_fall_in() -> None:
    new = NEW_SESSION_TOKENS / 16
    writes = [
        Write(0, "session", 12.0, 12.5, 20.0, new, 10.0),  # a new session's turn; output half inside
        Write(0, "session", 14.0, 15.0, 16.0, new + 1, 0.0),  # a context computed again
        Write(0, "oneoff", 5.0, 6.0, 26.0, 20.0, 100.0),  # prompt before the window; output 6 of 20 s
        Write(1, "burst", 12.0, 12.1, 13.0, 300.0, 10.0),  # another replica: not counted
        Write(0, "burst", 16.0, 16.0, 16.0, 50.0, 5.0),  # prompt at the window's end: outside [t0, t1)
    ]
    by = writes_between(writes, 0, 10.0, 16.0, 16)
    assert by["session new"] == pytest.approx(new)
    assert by["session context"] == pytest.approx(new + 1)
    assert by["session output"] == pytest.approx(10.0 * 3.5 / 7.5)
    assert by["oneoff prompt"] == 0.0
    assert by["oneoff output"] == pytest.approx(100.0 * 6.0 / 20.0)
    assert by["burst prompt"] == 0.0 and by["burst output"] == 0.0
