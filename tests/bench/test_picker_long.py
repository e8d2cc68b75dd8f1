"""The long-prompt section of ``kvgate bench picker``: its warm index must really match (else its
figures would time the miss path twice), and it must leave no index behind."""

from __future__ import annotations

import random

import pytest

from kvgate.bench.picker_micro import bench_long, long_setup
from kvgate.datalayer.kvindex import token_keys
from kvgate.scheduling.plugins import precise_prefix


@pytest.mark.parametrize(("variant", "cap"), [("precise-256", 256), ("precise-2048", 2048)])
def test_warm_prompts_match_their_document_on_one_endpoint_up_to_the_cap(variant, cap):
    name = f"test-long-{variant}"
    try:
        d, reqs = long_setup(variant, 4, 8192, True, 3, random.Random(0), name)
        index = precise_prefix.index_named(name)
        assert index is not None
        eps = [ep.address for ep in d.store.all()]
        for r in reqs:
            assert r.token_ids is not None
            keys = token_keys(r.token_ids, 16, cap)
            best = max(index.longest_prefix(keys, eps).values())  # engine reports alone, no credit
            assert best == min(cap, int(8192 * 0.9) // 16)
        long_setup(variant, 4, 8192, False, 2, random.Random(0), name + "-cold")
        cold_index = precise_prefix.index_named(name + "-cold")
        assert cold_index is not None
        assert cold_index.num_blocks() == 0 and cold_index.num_pending() == 0
    finally:
        precise_prefix._INDEXES.pop(name, None)
        precise_prefix._INDEXES.pop(name + "-cold", None)


def test_bench_long_times_every_variant_and_cleans_up():
    before = set(precise_prefix._INDEXES)
    for variant in ("precise-256", "precise-2048", "approximate"):
        p50, p99 = bench_long(variant, 4, 8192, warm=True, picks=3, repeats=1)
        assert 0 < p50 <= p99
    assert set(precise_prefix._INDEXES) == before
