"""qa32a Q3: ``kvgate serve`` adds ``stream_options.include_usage: true`` to a stream whose client did not ask
for usage (and strips the final ``choices: []`` chunk). vLLM sends usage in *every* chunk when
``include_usage and continuous_usage_stats`` (``should_include_usage``), so a client that sent
``"continuous_usage_stats": true`` without ``include_usage`` (or with it false, or ``"false"``, vLLM's lax
False) got a ``usage`` in every token chunk through ``kvgate serve``, none from vLLM or through
``kvgate epp``. The gateway now sends ``continuous_usage_stats: false`` with the ``include_usage`` it adds.

The upstream here follows vLLM's rule. Fails on main 86751e55: every token chunk carries ``usage``."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import make_config, running_gateway


class ContinuousUsageBackend(Backend):
    """Streams as vLLM does: ``usage`` in every chunk iff include_usage and continuous_usage_stats."""

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append((request.path, dict(request.headers), body))
        opts = body.get("stream_options") or {}
        include = opts.get("include_usage") is True
        continuous = include and opts.get("continuous_usage_stats") is True
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        for i in range(4):
            chunk: dict = {
                **head,
                "choices": [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}],
            }
            if continuous:
                chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": i + 1, "total_tokens": 4 + i}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if include:
            usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            await resp.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.mark.parametrize(
    "opts",
    [
        {"continuous_usage_stats": True},
        {"include_usage": False, "continuous_usage_stats": True},
        {"include_usage": "false", "continuous_usage_stats": True},
    ],
    ids=["absent", "false", "false-string"],
)
async def test_a_client_that_did_not_ask_for_usage_gets_none_in_its_chunks(opts: dict) -> None:
    b = await ContinuousUsageBackend("c").start()
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with (
            running_gateway(make_config([b.address])) as gw,
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{gw.port}/v1/chat/completions",
                data=orjson.dumps({**body, "stream_options": opts}),
            ) as r,
        ):
            status, raw = r.status, await r.read()
        assert status == 200
        events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
        assert [e["choices"][0]["delta"]["content"] for e in events] == ["t0", "t1", "t2", "t3"], raw
        with_usage = [e for e in events if "usage" in e]
        assert len(with_usage) == 0, f"{len(with_usage)} of {len(events)} chunks carry usage"
        (_, _, sent) = b.received[0]
        assert sent["stream_options"]["include_usage"] is True  # (the gateway still reads the final usage)
    finally:
        await b.stop()
