"""Review qa36c-F2: a long prompt's body was walked by ``bytearray.count`` six times per request (four units
for ``offload.worth_the_thread``, two brackets for ``parse_body``'s nesting guard), a plain per-byte loop
that cost more than the JSON parse. The decisions only need "more than N", so the body is searched
(memchr) and the search stops at the N + 1th unit: the answers stay those of the counts."""

from __future__ import annotations

import random

import pytest

from kvgate.httpfront import offload
from kvgate.openai.request import more_than


class _NoCount(bytearray):
    """A body whose ``count`` fails the test and whose ``find`` calls are counted."""

    finds = 0

    def count(self, *a: object) -> int:  # type: ignore[override]
        raise AssertionError("the whole body counted")

    def find(self, *a: object) -> int:  # type: ignore[override]
        type(self).finds += 1
        return super().find(*a)  # type: ignore[arg-type]


def _counted(raw: bytes, units: bytes, limit: int) -> bool:
    return sum(raw.count(bytes([u])) for u in units) > limit


@pytest.mark.parametrize("seed", range(20))
def test_more_than_answers_as_the_counts(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = b'ab ",{[]}'
    for _ in range(50):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
        for units in (b'",{[', b"[{"):
            for limit in (0, 1, 5, 37, 64, 200):
                assert more_than(raw, units, limit) == _counted(raw, units, limit), (raw, units, limit)
                assert more_than(bytearray(raw), units, limit) == _counted(raw, units, limit)


def test_at_the_limit_exactly() -> None:
    raw = b"[" * 30 + b"{" * 34
    assert not more_than(raw, b"[{", 64)
    assert more_than(raw + b"{", b"[{", 64)


def test_worth_the_thread_never_counts_a_long_prompt() -> None:
    # A long prompt (few units): on the loop, decided without counting its bytes.
    prompt = _NoCount(b'{"model":"m","prompt":"' + b"lorem ipsum " * 20_000 + b'"}')
    assert offload.OFF_LOOP_BYTES < len(prompt) <= offload.CHEAP_BYTES
    assert not offload.worth_the_thread(prompt)
    # Many strings: to the thread, after at most CHEAP_UNITS + 1 units found (plus a miss per unit).
    _NoCount.finds = 0
    many = _NoCount(b"[" + b'"x",' * 40_000 + b'"x"]')
    assert offload.worth_the_thread(many)
    assert _NoCount.finds <= offload.CHEAP_UNITS + 1 + len(offload._UNITS)
