"""Live: the real ``openai`` SDK's ``client.responses.create(previous_response_id=...)`` through ``kvgate
serve`` (kvgate policy, live scraping) to simulated vLLM replicas that keep their responses as vLLM does
(``kvgate.sim.routes_responses``). The follow-up's body is its new input alone; the replica prefills the
conversation. Before prev24 the gateway estimated the follow-up as its new input (#16): its estimate now
counts the earlier turn as the replica reported it, and with its home forgotten the follow-up still goes to
the replica holding the conversation (elsewhere: vLLM's 404)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.openai.responses import ResponseHomes
from kvgate.sim.server import Replica, ReplicaConfig

MODEL = "sim-model"
SYSTEM = "You are a helpful assistant who answers in full sentences. " * 12


def _spy(gw: Any) -> list[Any]:
    director = gw.proxy.pools[0].director
    seen: list[Any] = []
    real = director.on_dispatched

    def on_dispatched(ireq: Any, ep: Any) -> None:
        seen.append(ireq)
        real(ireq, ep)

    director.on_dispatched = on_dispatched
    return seen


async def test_openai_sdk_follow_ups_through_kvgate_to_simulated_replicas() -> None:
    replicas = [Replica(ReplicaConfig(model=MODEL, time_scale=50.0, seed=i), index=i) for i in range(2)]
    for r in replicas:
        await r.start()
    try:
        cfg = make_config([f"127.0.0.1:{r.port}" for r in replicas], models=(MODEL,), policy="kvgate")
        async with running_gateway(cfg, scrape=True) as gw:
            seen = _spy(gw)
            client = openai.AsyncOpenAI(base_url=base_url(gw) + "/v1", api_key="k", max_retries=0)
            # Six sessions at once (each its own instructions): the load spreads them over both replicas.
            firsts = await asyncio.gather(
                *(
                    client.responses.create(
                        model=MODEL,
                        instructions=f"Tenant {i}. {SYSTEM}",
                        input=f"Session {i}: tell me a story.",
                        max_output_tokens=24,
                    )
                    for i in range(6)
                )
            )
            assert all(first.usage is not None and first.output_text for first in firsts)
            assert all(r._stored for r in replicas)  # (conversations on both: the choice matters below)
            for i, first in enumerate(firsts):
                assert first.usage is not None
                new = "And then what happened?"
                if i % 2:
                    follow = await client.responses.create(
                        model=MODEL,
                        instructions=f"Tenant {i}. {SYSTEM}",
                        previous_response_id=first.id,
                        input=new,
                        max_output_tokens=8,
                    )
                else:  # (streamed: the usage comes in ``response.completed``)
                    stream = await client.responses.create(
                        model=MODEL,
                        instructions=f"Tenant {i}. {SYSTEM}",
                        previous_response_id=first.id,
                        input=new,
                        max_output_tokens=8,
                        stream=True,
                    )
                    follow = None
                    async for event in stream:
                        if event.type == "response.completed":
                            follow = event.response
                    assert follow is not None
                assert follow.usage is not None
                # The replica prefilled the conversation, most of it from its cache (the home).
                earlier = first.usage.input_tokens + first.usage.output_tokens
                assert follow.usage.input_tokens > earlier
                assert follow.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 2
                # The gateway's estimate: the conversation as the replica reported it, without the first
                # turn's instructions (vLLM 0.32 never carries them over), + this turn's instructions and
                # input: close to what the replica prefilled (rev-prev24 F3: it counted them twice).
                # Off by what the first turn's own estimate was (the same instructions, estimated as
                # characters / 4: the text estimate's error, not the conversation's) and a few tokens
                # for the new input; counting the instructions twice was ~300 tokens over here.
                est, real = seen[-1].prompt_tokens, follow.usage.input_tokens
                first_est = next(q.prompt_tokens for q in seen if q.conversation and not q.conversation.head)
                assert abs(est - real) <= abs(first_est - first.usage.input_tokens) + 10, (est, real)
            # Homes forgotten (an id another gateway process made, a restart of the map): each follow-up is
            # still estimated and prefix-scored as its conversation (its blocks continue the first turn's
            # chain). Before prev25 the chain was a score, not a pin: under load (8 copies of this test at
            # once) all six went to the replica the load and cost scorers favoured, and the three
            # conversations held elsewhere got vLLM's 404 (4 of 16 runs). The kept turn now says where it
            # was made (``Turn.home``): each goes there (test_followup_kept_home_prev25.py pins it under
            # load).
            assert gw.proxy is not None
            gw.proxy.responses = ResponseHomes()
            for i, first in enumerate(firsts):
                before = len(seen)
                again = await client.responses.create(
                    model=MODEL,
                    instructions=f"Tenant {i}. {SYSTEM}",  # (the same: the chain is a prefix, F3)
                    previous_response_id=first.id,
                    input="One more detail?",
                    max_output_tokens=4,
                )
                assert again.usage is not None and again.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]
                assert len(seen) > before
                sent = seen[-1]
                assert sent.conversation is not None and len(list(sent.conversation.head)) > 0
                assert sent.subset is not None and len(sent.subset) == 1  # (pinned, not scored)
            await client.close()
            for ep in gw.pools[0].endpoints():
                assert ep.inflight.requests == 0 and ep.inflight.pending_prefill_tokens == 0
    finally:
        for r in replicas:
            await r.stop()
