"""Review s28-qa Q3: ``session-affinity-scorer`` keeps up to ``maxSessions`` (100,000) sessions, each
keyed by what a client sent (``x-session-id``, up to the 64 KiB head, or the body's ``user``, up to
``maxBodyBytes``): bounded by count, not by bytes. It now keeps a fixed-size digest per session.
Fails on main 2df410d8 (300 picks with 100 KB keys: +30 MB traced)."""

from __future__ import annotations

import gc
import time
import tracemalloc

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.plugins.session import SessionAffinityScorer
from kvgate.scheduling.types import InferenceRequest

CFG = {
    "plugins": [{"type": "session-affinity-scorer"}, {"type": "max-score-picker"}],
    "schedulingProfiles": [
        {
            "name": "d",
            "plugins": [{"pluginRef": "session-affinity-scorer"}, {"pluginRef": "max-score-picker"}],
        }
    ],
}


def _director() -> Director:
    store = EndpointStore(make_endpoint(f"10.229.0.{i}:8000") for i in range(4))
    now = time.monotonic()
    for ep in store.all():
        ep.metrics.updated_at = now
        ep.answered_at = now
    return build_director(CFG, store, clock=time.monotonic, seed=0)


def test_session_keys_held_are_bounded_in_bytes() -> None:
    d = _director()
    d.pick(InferenceRequest("warm", "m", session_key="warm"))
    n, size = 300, 100_000
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            key = f"{i:08d}" + "u" * size  # a client's body ``user`` (or x-session-id) of 100 KB
            d.pick(InferenceRequest(f"q3-{i}", "m", session_key=key))
            del key
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 3_000_000, f"{n} sessions with {size}-byte keys hold {grown / 1e6:.1f} MB"


def test_long_keys_still_route_by_their_whole_value() -> None:
    """Equal keys (however long) go back to their endpoint; keys that differ only at the end are two
    sessions."""
    d = _director()
    scorer = d.handle.plugins["session-affinity-scorer"]
    assert isinstance(scorer, SessionAffinityScorer)
    tail = "s" * 70_000
    first = {i: d.pick(InferenceRequest(f"a{i}", "m", session_key=tail + str(i))).primary for i in range(8)}
    assert len(scorer.sessions) == 8
    for i in range(8):
        for j in range(5):
            again = d.pick(InferenceRequest(f"b{i}-{j}", "m", session_key=tail + str(i))).primary
            assert again is first[i]
    assert len(scorer.sessions) == 8
