"""Review s14-fixes L-M3: the stale-life drop (commit 07afc91) on a replay that holds nothing."""

from __future__ import annotations

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up
from datalayer.test_kvevents import batch, stored_map


async def test_an_engine_whose_replay_buffer_holds_nothing_does_not_lose_every_live_batch() -> None:
    """vLLM with ``buffer_steps=0`` (``deque(maxlen=0)``: a replay endpoint configured, nothing kept), or any
    publisher whose replay answers the end marker alone: the join's catch-up gets nothing (``last_seq``
    stays None), so every live batch with seq > 0 asks ``_replay(0, seq, partial_ok=True)``, which is now
    "past" (the end marker came before seq - 1) and the batch is dropped as an earlier life's. ``last_seq``
    is never set by a drop, so the next batch takes the same path: every batch dropped, for good, the
    index empty for that engine (prefix routing blind to it) with only a rate-limited WARNING.
    Before 07afc91: the empty replay was applied (nothing) and the live batch applied after it."""
    server = VLLMShapedReplay([])  # answers every request with the end marker alone
    async with caught_up(server) as (sub, idx):
        assert sub.stats.last_seq is None
        for seq in range(5, 25):  # the engine had published 0-4 before the SUB joined
            await sub._live(seq, batch(stored_map([7_000 + seq], None, [seq % 50] * 4)))
        held = idx.engine_hashes("a")
        dropped = getattr(sub.stats, "stale_dropped", 0)  # (no such counter before 07afc91)
        assert dropped == 0, f"{dropped} live batches dropped as stale"
        assert held == set(range(7_005, 7_025)), f"{len(held)} of 20 blocks held"
