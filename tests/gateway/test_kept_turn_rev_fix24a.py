"""s24-rev-fix24a: what a kept Responses turn holds vs what vLLM 0.32 carries into a follow-up.

F1: a turn's reasoning tokens are kept (``usage.output_tokens`` counts them), while vLLM 0.32's
``construct_input_messages`` (vllm/entrypoints/openai/responses/utils.py:272-282, "We skip the reasoning
output") carries only the earlier output's message text.
F3: the head's scale is the whole request's real/estimated ratio, the kept history (already real tokens)
included: with a tokenizer denser or sparser than 4 chars/token the kept turn drifts from what vLLM
carries, turn after turn (repeated instructions, the SDK loop)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.openai.request import RESPONSES, parse_body
from kvgate.openai.responses import finished_turn, follow_up
from kvgate.scheduling.types import InferenceRequest, Usage

REASONING, ANSWER, PROMPT = 2000, 40, 40


class Reasoner(ResponsesStore):
    """A reasoning model's answers: a reasoning item, then the message (vLLM with --reasoning-parser)."""

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rid = f"resp_{self.name}_{len(self.made)}"
        self.made.append(rid)
        doc: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "model": body.get("model"),
            "status": "completed",
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "hmm " * REASONING}]},
                {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "yes " * ANSWER, "annotations": []}]},
            ],
            "usage": {
                "input_tokens": PROMPT,
                "output_tokens": REASONING + ANSWER,
                "output_tokens_details": {"reasoning_tokens": REASONING},
                "total_tokens": PROMPT + REASONING + ANSWER,
            },
        }  # fmt: skip
        return web.json_response(doc)


@pytest.mark.asyncio
async def test_reasoning_tokens_are_not_carried_into_the_follow_up() -> None:
    async with serving(Reasoner("s0")) as (store,):
        cfg = make_config([store.address], policy="kvgate")
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            assert gw.proxy is not None
            director = gw.proxy.pools[0].director
            seen: list[Any] = []
            real = director.on_dispatched

            def spy(ireq: Any, ep: Any) -> None:
                seen.append(ireq)
                real(ireq, ep)

            director.on_dispatched = spy
            url = base_url(gw) + "/v1/responses"
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "Q1?"})) as r:
                first = await r.json()
            follow = {"model": "m", "input": "and then?", "previous_response_id": first["id"]}
            async with s.post(url, data=orjson.dumps(follow)) as r:
                assert r.status == 200
            own = parse_body(RESPONSES, orjson.dumps(follow)).prompt_tokens
            # (F1) vLLM 0.32 prefills Q1? (PROMPT) + the answer's text (~ANSWER) + the new input,
            # not the reasoning.
            carried = seen[-1].prompt_tokens - own
            assert carried <= 2 * (PROMPT + ANSWER), (carried, PROMPT + ANSWER)


def test_the_kept_turn_does_not_drift_with_a_denser_tokenizer() -> None:
    density = 2  # the model's characters per token (code, CJK); the estimate assumes 4
    lead = "<|system|>\n" + "x" * 16000 + "\n"
    turn, truth = None, 0  # truth: what vLLM carries, every input and output, no instructions
    worst = 0.0
    for n in range(1, 11):
        inp = "<|user|>\n" + "y" * 200 + "\n"
        text = lead + inp
        req = InferenceRequest(request_id=str(n), model="m", prompt_text=text, prompt_tokens=len(text) // 4)
        follow_up(req, True, turn, len(lead))
        assert req.conversation is not None
        req.conversation.response_id = f"r{n}"
        real = len(lead) // density + len(inp) // density + truth
        turn = finished_turn(req, Usage(prompt_tokens=real, completion_tokens=50))
        assert turn is not None
        truth += len(inp) // density + 50
        worst = max(worst, turn.tokens / truth)
    assert worst <= 1.25, worst
