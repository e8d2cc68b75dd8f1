"""``kvgate sim``'s ``POST /v1/responses`` keeps conversations as vLLM does (``store``): a follow-up
(``previous_response_id``) is prefilled as the conversation (its cache holds the earlier turn), an id it
does not hold is vLLM's 404, ``store: false`` keeps nothing. With the real ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import openai
import pytest

from kvgate.sim.fleet import SimFleet

MODEL = "sim-model"
FleetFactory = Callable[..., Awaitable[SimFleet]]


def _client(fleet: SimFleet) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fleet.urls[0] + "/v1", api_key="k", max_retries=0)


async def test_a_follow_up_is_prefilled_as_the_conversation(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, model=MODEL)
    client = _client(fleet)
    first = await client.responses.create(
        model=MODEL, instructions="Be brief. " * 20, input="Tell me a story.", max_output_tokens=6
    )
    assert first.usage is not None and first.usage.output_tokens == 6 and first.output_text
    # Repeating its instructions (vLLM 0.32 puts a follow-up's own first and drops the earlier ones): the
    # conversation is the first turn's prompt continued, most of it from the cache.
    follow = await client.responses.create(
        model=MODEL,
        instructions="Be brief. " * 20,
        previous_response_id=first.id,
        input="And then?",
        max_output_tokens=3,
    )
    assert follow.usage is not None
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 16
    # Without them: the earlier instructions are not prefilled (rev-prev24 F1; this test pinned the
    # opposite before), so the conversation's cached start is gone.
    bare = await client.responses.create(
        model=MODEL, previous_response_id=first.id, input="And then?", max_output_tokens=3
    )
    assert bare.usage is not None
    assert bare.usage.input_tokens < follow.usage.input_tokens - 20
    with pytest.raises(openai.NotFoundError, match="not found"):
        await client.responses.create(model=MODEL, previous_response_id="resp_nope", input="x")
    unstored = await client.responses.create(model=MODEL, input="x", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, previous_response_id=unstored.id, input="y")
    await client.close()


async def test_a_streamed_answer_ends_with_its_usage(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, model=MODEL)
    client = _client(fleet)
    stream = await client.responses.create(
        model=MODEL, input="Hello there.", max_output_tokens=5, stream=True
    )
    kinds, deltas, done = [], 0, None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas += 1
        elif event.type == "response.completed":
            done = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed" and deltas == 5
    assert done is not None and done.usage is not None and done.usage.output_tokens == 5
    await client.close()
