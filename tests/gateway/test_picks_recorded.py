"""Issue #16's per-request cuts keep every routing decision the stream reaches: the recorded stream of
``picks_stream.py`` through the whole in-memory gateway (no flow control, rewrite rule, rate limit or
tokenizer; its docstring says what it covers) picks the same endpoint for every request, and for every
retry, as main at ca1e66d did (``data/picks_stream.json``, recorded there), and answers each the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import picks_stream

GOLDEN = Path(__file__).parent / "data" / "picks_stream.json"


@pytest.fixture(scope="module")
def recorded() -> tuple[list[list[Any]], dict[str, int]]:
    seen: dict[str, int] = {}
    return picks_stream.record(seen=seen), seen


def test_the_recorded_stream_picks_as_before_the_cuts(
    recorded: tuple[list[list[Any]], dict[str, int]],
) -> None:
    want = json.loads(GOLDEN.read_text())
    assert (want["seed"], want["events"]) == (picks_stream.SEED, picks_stream.EVENTS)
    got = recorded[0]
    assert len(got) == len(want["picks"])
    diff = [(g, w) for g, w in zip(got, want["picks"], strict=True) if g != w]
    assert not diff, f"{len(diff)} of {len(got)} requests decided otherwise, first: {diff[:3]}"


def test_the_stream_reaches_every_endpoint_both_answers_usage_kinds_and_retries(
    recorded: tuple[list[list[Any]], dict[str, int]],
) -> None:
    got, seen = recorded
    assert {r[1] for r in got} == set(picks_stream.ENDPOINTS)
    assert sum(1 for r in got if r[-1] == 200) > 600
    for kind in ("stream", "json", "max_tokens", "no_max_tokens", "cached_reported", "cached_not_reported"):
        assert seen[kind] > 50, (kind, seen)
    assert seen["retried"] > 10, seen
    assert sum(sum(1 for x in r[2:] if x in picks_stream.ENDPOINTS) for r in got) == seen["retried"]
