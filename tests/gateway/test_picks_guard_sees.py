"""The recorded-picks guard (``test_picks_recorded.py``) sees the response side of the per-request path
(review s16-tp, finding 1): a regression in what an answer feeds back to the picker -- the decode pace
learned from a stream's first token to its end, the usage, the engine's cached tokens (the stream runs
with ``cachedTokensFeedback`` on) -- or in the retry pick changes some recorded pick. (A mean decode
length never updated moves no pick of this stream: not covered.)

Each test applies one such regression in-process and runs the first ``EVENTS`` events of the guard's
stream (the same events as the full stream's first ones, so each line must be the start of the golden
line) and requires a difference. On the guard as first landed (every answer in one piece at one clock
value, every request with ``max_tokens``, no cached tokens, no failures) each of them passed unseen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import picks_stream
from kvgate.gateway.proxy import Proxy
from kvgate.openai import protocol, usage
from kvgate.requestcontrol.director import Director
from kvgate.scheduling import speed

GOLDEN = Path(picks_stream.__file__).parent / "data" / "picks_stream.json"
EVENTS = 800  # (about half the stream: each case below differs within it)


def _differ() -> int:
    golden = json.loads(GOLDEN.read_text())["picks"]
    got = picks_stream.record(events=EVENTS)
    assert 300 < len(got) < len(golden)
    return sum(1 for g, w in zip(got, golden, strict=False) if w[: len(g)] != g)


def test_the_first_events_alone_pick_as_recorded() -> None:
    assert _differ() == 0  # (so each difference below is the regression's)


def test_a_picker_that_never_learns_a_decode_pace_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed.SpeedEstimator, "observe", lambda self, *a, **k: False)
    assert _differ() > 0, "pace learning broken, yet every pick as recorded"


def test_a_picker_that_never_gets_the_usage_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    finished = Director.on_finished

    def without_usage(self: Director, req: Any, endpoint: Any, use: Any, ok: bool) -> None:
        finished(self, req, endpoint, None, ok)

    monkeypatch.setattr(Director, "on_finished", without_usage)
    assert _differ() > 0, "usage never reaches the picker, yet every pick as recorded"


def test_usage_without_the_engines_cached_tokens_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    of = protocol.usage_of

    def without_details(prompt: Any, completion: Any, details: Any) -> Any:
        return of(prompt, completion, None)

    monkeypatch.setattr(protocol, "usage_of", without_details)
    monkeypatch.setattr(usage, "usage_of", without_details)
    assert _differ() > 0, "cached tokens never known, yet every pick as recorded"


def test_a_retry_pick_that_ignores_the_tried_endpoints_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    def retry_anywhere(pool: Any, director: Any, ireq: Any, tried: set[str], explain: bool) -> Any:
        ireq.subset = None
        return director.pick(ireq, explain)

    monkeypatch.setattr(Proxy, "_retry_pick", staticmethod(retry_anywhere))
    assert _differ() > 0, "retry pick broken, yet every pick as recorded"
