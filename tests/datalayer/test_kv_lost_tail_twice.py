"""Review s15-fixes-b finding 2 (the reviewer's test, adapted). fixkv15 (f616251) made the lost-tail check
accept a second answer that went further than the first: it begins with the first answer's last batch,
has no hole and ends (end marker) short of the range, so it "confirmed" the engine's newest. An engine
whose ROUTER drops the tail of both answers (the cause the check exists for: a full pipe, the end marker,
sent last, getting through) was then confirmed as another life, and the SAME life's live batch dropped as
an earlier life's (WARNING blaming a restart). Failed on main at ca1e66d: requests [0, 151, 299],
stale_dropped 1, last_seq 150. Now the second answer may go further than the first only by the live
batches the subscriber received between the two requests (what the engine can have published
meanwhile); here none came, so its 50 more batches are a lost tail again: asked again, the third answer
heals the gap. (Since k8s18 a gap's answer of at most ``WHOLE_ANSWER_MAX`` batches is whole, its end not
checked, as kvhub17 made the catch-up's: the ROUTER's pipe to a new peer holds 1,000 messages. So the
check's answer here is longer than that, 299-379, and loses 380..)
"""

from __future__ import annotations

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life

NEW = 2_000_000


async def test_a_same_life_batch_is_not_dropped_when_two_answers_lose_their_tails() -> None:
    life = engine_life(NEW, 402)

    def lose(n: int, seq: int | None) -> bool:
        # the gap's request (from 151) loses 300.., its check (from 299) loses 380.. (by start, not by
        # number: the join's catch-up makes one request or two)
        if seq is None:
            return False
        start = server.requests[n - 1]
        return (start == 151 and seq >= 300) or (start == 299 and seq >= 380)

    server: VLLMShapedReplay
    server = VLLMShapedReplay(life[:151], lose=lose)
    async with caught_up(server) as (sub, idx):
        assert sub.stats.last_seq == 150
        server.buffer = list(enumerate(life[:401]))  # the same life went on to 400, all of it buffered
        await sub._live(400, life[400])  # its newest batch, live: a gap 151..399 the replay must heal
        held = idx.engine_hashes("a")
        assert NEW + 400 in held, (
            f"the same life's live batch was dropped as another life's (requests {server.requests}, "
            f"stale_dropped {sub.stats.stale_dropped}, last_seq {sub.stats.last_seq})"
        )
        assert held == set(range(NEW, NEW + 401))
        assert sub.stats.stale_dropped == 0 and sub.stats.resyncs == 0
