"""End to end with the official openai SDK: client -> kvgate -> model servers, all real HTTP."""

from __future__ import annotations

import aiohttp
import openai
import orjson

from gateway.conftest import base_url, make_config, running_gateway


def _client(gw: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(gw) + "/v1", api_key="k", max_retries=0)  # type: ignore[arg-type]


async def test_completions_and_chat_non_streaming(backends):
    bs = await backends(2)
    async with running_gateway(make_config([b.address for b in bs])) as gw:
        client = _client(gw)
        c = await client.completions.create(model="m", prompt="hello there", max_tokens=3)
        assert c.model == "m"
        assert c.choices[0].text.count("-") == 3
        assert c.usage is not None and c.usage.completion_tokens == 3
        chat = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.prompt_tokens == 7
        # Two requests, round robin over two backends: each saw one, with the client's body.
        assert sorted(len(b.received) for b in bs) == [1, 1]
        await client.close()


async def test_streaming_passes_chunks_and_hides_the_usage_chunk_it_added(backends):
    (b,) = await backends(1, tokens=5)
    async with running_gateway(make_config([b.address])) as gw:
        client = _client(gw)
        stream = await client.completions.create(model="m", prompt="x" * 40, max_tokens=5, stream=True)
        texts, usages = [], []
        async for chunk in stream:
            if chunk.choices:
                texts.append(chunk.choices[0].text)
            usages.append(chunk.usage)
        assert texts == [f"b0-{i} " for i in range(5)]
        assert usages == [None] * 5  # the client did not ask for usage: it never sees the gateway's
        # ...but the gateway asked upstream for it, so its accounting saw real token counts.
        _, _, sent = b.received[-1]
        assert sent["stream_options"] == {"include_usage": True}
        chat = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in chat]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 5
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
            f"b0-{i} " for i in range(5)
        )
        await client.close()


async def test_embeddings_and_models(backends):
    (b,) = await backends(1)
    cfg = make_config([b.address], models=("m", "m2"), adapters=("sql-lora",))
    async with running_gateway(cfg) as gw:
        client = _client(gw)
        e = await client.embeddings.create(model="m", input="abc")
        assert e.data[0].embedding == [0.1, 0.2, 0.3]
        models = await client.models.list()
        ids = {m.id: m for m in models.data}
        assert set(ids) == {"m", "m2", "sql-lora"}
        assert getattr(ids["sql-lora"], "parent", None) == "m"
        await client.close()


async def test_adapter_request_reaches_the_pool(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address], adapters=("sql-lora",))) as gw:
        client = _client(gw)
        c = await client.completions.create(model="sql-lora", prompt="select", max_tokens=1)
        assert c.model == "sql-lora"
        assert b.received[-1][2]["model"] == "sql-lora"
        await client.close()


async def test_body_passes_through_byte_for_byte_when_unchanged(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        raw = b'{"model": "m", "prompt": "keep   my  spacing", "max_tokens": 2, "extra_field": [1, 2]}'
        async with s.post(
            base_url(gw) + "/v1/completions", data=raw, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 200
            body = orjson.loads(await r.read())
        assert body["model"] == "m"
        assert b.received[-1][2] == orjson.loads(raw)
