"""``Director.on_whole`` (a reply read whole: the gateway's non-streamed answers) has the effects of the
two calls it replaces, ``on_first_token(learn=False)`` then ``on_finished``: the same picks on the seeded
trace (``kvgate.bench.picktrace``) and the same accounting after it (every endpoint's ``InFlight``, the
learned paces, the decode estimate, what is still tracked), with and without flow control."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from kvgate.bench import picktrace
from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.types import InferenceRequest, Usage

from .test_pick_equivalence import _kvgate_doc, _slo_policy

STEPS = 2500


def _track(t: Any) -> dict[str, Any]:
    keys = None if t.keys is None else (list(t.keys.keys), t.keys.tokens(len(t.keys.keys)))
    return {f: getattr(t, f) for f in t.__slots__ if f not in ("keys", "stop")} | {"keys": keys}


def _state(d: Any) -> dict[str, Any]:
    return {
        "inflight": {ep.address: asdict(ep.inflight) for ep in d.store.all()},
        "speed": {ep.address: d.speed.cost(ep.address) for ep in d.store.all()},
        "mean_decode": d.mean_decode,
        "tracks": {k: _track(t) for k, t in d._tracks.items()},
        "picked": list(d._picked),
        "victims": list(d._victims),
    }


class _Door:
    """The Director as the trace drives it, but every finish is the gateway's finish of a whole reply."""

    def __init__(self, director: Any, whole: bool) -> None:
        self.d, self.whole = director, whole

    def __getattr__(self, name: str) -> Any:
        return getattr(self.d, name)

    def on_finished(self, req: InferenceRequest, ep: Endpoint, usage: Usage | None, ok: bool) -> None:
        if self.whole:
            self.d.on_whole(req, ep, usage, ok)
        else:  # (what the gateway's ``_whole`` called before)
            self.d.on_first_token(req, ep, learn=False)
            self.d.on_finished(req, ep, usage, ok)


class _Ticking(picktrace.Clock):
    """Each reading 2 ms after the last: a first token and its finish read apart, as a real clock's, so
    a short whole reply's decode pace is learned (``SpeedEstimator.observe`` takes its sample)."""

    def __call__(self) -> float:
        self.now += 0.002
        return self.now


def _run(
    policy: Any, seed: int, whole: bool, judge: bool = False, ticking: bool = False
) -> tuple[list[Any], dict[str, Any], Any]:
    d, store, clock = picktrace.build(policy, 4, seed)
    if ticking:
        clock.__class__ = _Ticking
    picks = picktrace.run(_Door(d, whole), store, clock, seed, STEPS, explain_every=7, judge=judge)
    return picks, _state(d), d


@pytest.mark.parametrize("ticking", [False, True])
@pytest.mark.parametrize("seed", [3, 5])
def test_on_whole_is_first_token_then_finished(seed: int, ticking: bool) -> None:
    got, got_state, d = _run(_kvgate_doc(), seed, whole=True, ticking=ticking)
    want, want_state, _ = _run(_kvgate_doc(), seed, whole=False, ticking=ticking)
    assert got == want
    assert got_state == want_state
    # The trace reached the paths: requests started before their finish and not, paces learned.
    assert sum(inf["started"] for inf in got_state["inflight"].values()) > 300
    assert any(v is not None for v in got_state["speed"].values())
    assert d.flow is None


def test_on_whole_under_flow_control_is_the_two_calls() -> None:
    got, got_state, d = _run(_slo_policy(), 9, whole=True, judge=True)
    want, want_state, _ = _run(_slo_policy(), 9, whole=False, judge=True)
    assert d.flow is not None
    assert got == want
    assert got_state == want_state


def test_on_whole_of_an_unknown_request_does_nothing() -> None:
    d, store, _clock = picktrace.build(_kvgate_doc(), 2, 0)
    ep = store.all()[0]
    before = asdict(ep.inflight)
    d.on_whole(InferenceRequest("nobody", "m", prompt_text="x"), ep, Usage(1, 9), True)
    assert asdict(ep.inflight) == before and d.mean_decode == _state(d)["mean_decode"]
