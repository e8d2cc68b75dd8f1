"""Issue #16's per-request cuts keep every routing decision: the recorded stream of ``picks_stream.py``
through the whole in-memory gateway picks the same endpoint for every request as main at ca1e66d did
(``data/picks_stream.json``, recorded there), and answers each the same."""

from __future__ import annotations

import json
from pathlib import Path

from gateway import picks_stream

GOLDEN = Path(__file__).parent / "data" / "picks_stream.json"


def test_the_recorded_stream_picks_as_before_the_cuts() -> None:
    want = json.loads(GOLDEN.read_text())
    assert (want["seed"], want["events"]) == (picks_stream.SEED, picks_stream.EVENTS)
    got = picks_stream.record()
    assert len(got) == len(want["picks"])
    diff = [(g, w) for g, w in zip(got, want["picks"], strict=True) if g != w]
    assert not diff, f"{len(diff)} of {len(got)} requests decided otherwise, first: {diff[:3]}"


def test_the_stream_exercises_every_endpoint_and_both_answers() -> None:
    got = picks_stream.record()
    assert {r[1] for r in got} == set(picks_stream.ENDPOINTS)
    assert sum(1 for r in got if r[-1] == 200) > 600
