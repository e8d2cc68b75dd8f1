"""s25-rev-fixprev25 R2: ``Leads.key`` admitted a head when its own cost was under ``max_bytes``, then evicted
oldest-first until its str/key bytes plus the OrderedDict's table (``sys.getsizeof``, which does not shrink
on deletes) fit: a head whose cost fits alone but not beside the table (a few MiB of tools at the default
bound with the table full of short heads) evicted every other head and then itself, 0 heads kept. Now it is
admitted only if it fits beside the table as it is; else it is not kept and nothing is evicted. The first
test fails on main 8c52c2be (0 heads); the second (a head that does fit beside the table is kept, the
oldest evicted for it) passes on both."""

from __future__ import annotations

import sys

from kvgate.openai.responses import Leads

CAP = 256 * 1024


def _full() -> Leads:
    leads = Leads(CAP)
    for i in range(5000):  # (full of short distinct heads: the table at its largest)
        head = f"<|system|>\n{i}\n"
        leads.key(head + "hi", len(head), 0)
    return leads


def test_a_head_that_cannot_fit_beside_the_table_is_not_kept_and_evicts_nothing() -> None:
    leads = _full()
    before, held = len(leads), leads.held_bytes
    big = "y" * (CAP - 1000)  # (its own cost under the bound, not beside the table)
    key = leads.key(big + "<|user|>\nhi\n", len(big), 0)
    assert key == (hash(big) or 1)  # (its key as hashing finds it, kept or not)
    assert len(leads) == before, (before, len(leads))  # main: 0
    assert leads.held_bytes == held <= CAP


def test_a_head_that_fits_beside_the_table_is_kept() -> None:
    leads = _full()
    before = len(leads)
    table = sys.getsizeof(leads._heads)
    big = "y" * (CAP - table - 4096)  # (fits beside the table once most short heads are evicted)
    key = leads.key(big + "<|user|>\nhi\n", len(big), 0)
    assert 1 <= len(leads) < before
    assert leads.key(big + "more", len(big), key) == key  # (kept: found without hashing)
    assert leads.held_bytes <= CAP
