"""``WaitingIndex`` answers as the scan it replaced: of an endpoint's ``window`` most recently added live
requests, those whose key at the asked depth is the prompt's (session 22; the scan: main's
``KVGateCostScorer._waiting_on_prefix`` before it)."""

from __future__ import annotations

import random
from array import array
from itertools import islice

import pytest

from kvgate.scheduling.plugins import waiting_index
from kvgate.scheduling.plugins.waiting_index import U64, WaitingIndex


def _scan(waiting: dict[str, array], keys: list[int], depth: int, window: int) -> list[str]:
    key = keys[depth - 1] & U64
    recent = islice(reversed(waiting.items()), window)
    return [rid for rid, h in recent if len(h) >= depth and h[depth - 1] == key]


def _chain(rng: random.Random, prefixes: list[list[int]]) -> list[int]:
    """A prompt's chained keys: a shared prefix (cut anywhere) then its own blocks."""
    base = rng.choice(prefixes)
    keys = base[: rng.randint(0, len(base))]
    h = keys[-1] if keys else 0
    for _ in range(rng.randint(0 if keys else 1, 12)):
        h = hash((h, rng.getrandbits(8))) & U64  # (few values per step: prompts meet again past a fork)
        keys.append(h)
    return keys


def _prefixes(rng: random.Random) -> list[list[int]]:
    out = []
    for _ in range(4):
        h, keys = 7, []
        for _ in range(rng.randint(1, 70)):
            h = hash((h, rng.getrandbits(2))) & U64
            keys.append(h)
        out.append(keys)
    return out


# (INDEX_ON, INDEX_OFF): the scan alone, the index alone, and both in turn as the window fills and empties.
MODES = {"scan": (10**9, 0), "index": (1, 0), "both": (6, 3)}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window", [1, 3, 16])
@pytest.mark.parametrize("mode", list(MODES))
def test_counts_and_ids_match_the_scan_of_the_most_recent_window(
    monkeypatch: pytest.MonkeyPatch, seed: int, window: int, mode: str
) -> None:
    monkeypatch.setattr(waiting_index, "INDEX_ON", MODES[mode][0])
    monkeypatch.setattr(waiting_index, "INDEX_OFF", MODES[mode][1])
    rng = random.Random(seed * 100 + window)
    switched, was = 0, False
    prefixes = _prefixes(rng)
    ref: dict[str, array] = {}
    idx = WaitingIndex(window)
    asked = matched = 0
    for step in range(3000):
        op = rng.random()
        fill = (step // 300) % 2 == 0  # phases that fill the window past its length, then drain it
        if op < (0.55 if fill else 0.2) or not ref:
            rid = f"r{step}"
            if ref and rng.random() < 0.05:  # a retry: picked again, it waits as the newest
                rid = rng.choice(list(ref))
                del ref[rid]
                idx.remove(rid)
            keys = array("Q", _chain(rng, prefixes))
            ref[rid] = keys
            idx.add(rid, keys)
        elif op < 0.75:  # (a removal: 20 % of steps filling, 55 % draining)
            rid = rng.choice(list(ref)) if rng.random() < 0.7 else next(reversed(ref))
            del ref[rid]
            idx.remove(rid)
        else:
            # Python ints past 64 bits or negative, as the prefix sources' raw keys may be.
            prompt = [k | (rng.getrandbits(1) << 64) for k in _chain(rng, prefixes)]
            depth = rng.randint(1, len(prompt))
            want = _scan(ref, prompt, depth, window)
            assert idx.count(prompt, depth) == len(want)
            assert sorted(idx.sharing(prompt, depth)) == sorted(want)
            asked += 1
            matched += bool(want)
        assert len(idx) == len(ref)
        indexed = idx._levels is not None
        switched += indexed != was
        was = indexed
    assert asked > 500 and matched > 40  # (the trace asks and meets shared prefixes)
    if mode == "both" and window > MODES["both"][0]:
        assert switched >= 3  # (built, dropped, built again)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_request_leaving_the_window_lets_the_newest_older_one_back(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(waiting_index, "INDEX_ON", MODES[mode][0])
    monkeypatch.setattr(waiting_index, "INDEX_OFF", MODES[mode][1])
    idx = WaitingIndex(2)
    a, b = array("Q", [1, 2]), array("Q", [1, 3])
    idx.add("old", a)
    idx.add("mid", b)
    idx.add("new", array("Q", [9]))
    assert idx.count([1, 2], 2) == 0  # "old" is past the window
    assert idx.count([1], 1) == 1
    idx.remove("new")
    assert idx.count([1], 1) == 2 and idx.count([1, 2], 2) == 1
    idx.remove("old")
    idx.remove("mid")
    assert len(idx) == 0 and idx.count([1], 1) == 0
