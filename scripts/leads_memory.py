"""Memory held by a door's kept heads (``openai.responses.Leads``, its default bound) once full, and the CPU
of a first turn's head key (hash + insert, the oldest evicted), in whichever tree is on ``PYTHONPATH``.

    PYTHONPATH=<tree>/src:scripts python scripts/leads_memory.py [ROUNDS]

Heads, each distinct (a first turn's tools + ``instructions`` as ``responses_lead`` renders them):
``short``: "<|system|>\\n{i}\\n" (an ``instructions`` carrying a date, a user name, a request id);
``short non-ASCII``: the same with an emoji (4 bytes a character); ``2 KB`` and ``64 KB``. Memory is
tracemalloc's (what the kept heads and their entries hold, after 4x the heads that fill the bound went
through); ``insert``: microseconds of CPU per first turn's ``key`` with a distinct 2 KB head, the bound
full (the fastest of ``ROUNDS``, default 5, rounds of 20,000). Run it once per tree (docs/scheduling.md).
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable

from _costkit import fastest

SHAPES: dict[str, Callable[[int], str]] = {
    "short": lambda i: f"{i}",
    "short non-ASCII": lambda i: f"\U0001f600 {i}",
    "2 KB": lambda i: f"{i:08d}" + "x" * 2040,
    "64 KB": lambda i: f"{i:08d}" + "x" * 65_528,
}


def held(shape: Callable[[int], str]) -> tuple[float, int]:
    from kvgate.openai.request import responses_lead
    from kvgate.openai.responses import Leads

    tracemalloc.start()
    try:
        leads = Leads()
        before = tracemalloc.get_traced_memory()[0]
        i = filled = 0
        while not filled or i < 4 * filled:  # (until 4x the heads that filled it went through)
            n = len(leads)
            head = responses_lead(shape(i))
            leads.key(head + "<|user|>\nhi\n", len(head), 0)
            if not filled and len(leads) == n:  # (the first eviction: full)
                filled = i
            i += 1
        del head  # (the last one: held by this loop, not only by ``leads``)
        got = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return got / 2**20, len(leads)


def insert(rounds: int) -> float:
    from kvgate.openai.request import responses_lead
    from kvgate.openai.responses import Leads

    leads = Leads()
    texts = [responses_lead(f"{i:08d}" + "x" * 2040) + "<|user|>\nhi\n" for i in range(4096)]
    chars = len(texts[0]) - len("<|user|>\nhi\n")
    for t in texts:  # (full before timing: every timed insert evicts)
        leads.key(t, chars, 0)
    n = 20_000
    salt = [0]

    def work() -> None:
        s = salt[0] = salt[0] + 1
        for i in range(n):  # (a new head each call: its own first character varies with the round)
            t = texts[i & 4095]
            leads.key(chr(0x41 + (s + i // 4096) % 26) + t[1:], chars, 0)

    best, _ = fastest(rounds, work)
    return best / n * 1e6


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for name, shape in SHAPES.items():
        mib, heads = held(shape)
        print(f"held, {name} heads: {mib:.2f} MiB for {heads} heads")
    print(f"insert (a first turn's distinct 2 KB head, bound full): {insert(rounds):.2f} us/turn")


if __name__ == "__main__":
    main()
