"""The simulated replica over real HTTP: the openai SDK, metrics, errors, LoRA and the peer-router probes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvgate.sim.fleet import SimFleet

FleetFactory = Callable[..., Awaitable[SimFleet]]

MODEL = "sim-model"
PROMPT = " ".join(["abc", "def", "ghi", "jkl"] * 20)  # 80 tokens: 5 full blocks of 16


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample as ``name{sorted labels}`` -> value, plus ``name`` -> value when unlabelled-by-choice."""
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, s.value)
            extra = {k: v for k, v in s.labels.items() if k not in ("model_name", "engine")}
            if extra:
                out[s.name + str(sorted(extra.items()))] = s.value
    return out


async def test_openai_completions_non_streaming_and_cached_tokens(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1)
    client = _client(fleet.urls[0])
    first = await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=7)
    assert first.object == "text_completion"
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (80, 7)
    assert first.usage.total_tokens == 87
    assert len(first.choices[0].text.split()) == 7
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    # 80 tokens = 5 blocks; the last token is always recomputed, so 4 full blocks hit.
    assert again.usage.prompt_tokens_details.cached_tokens == 64
    await client.close()


async def test_openai_streaming_completions_and_chat(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1)
    client = _client(fleet.urls[0])
    chunks = [
        c
        async for c in await client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    ]
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5

    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "abc def"}, {"role": "user", "content": "ghi jkl"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chat = [c async for c in stream]
    assert chat[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    assert len(content.split()) == 4
    usage = chat[-1].usage
    assert usage is not None and usage.completion_tokens == 4 and usage.prompt_tokens > 4

    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_completion_tokens=2
    )
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage is not None and resp.usage.completion_tokens == 2
    await client.close()


async def test_stream_without_usage_has_no_usage_chunk(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            fleet.urls[0] + "/v1/completions",
            json={"model": MODEL, "prompt": "abc", "max_tokens": 3, "stream": True},
        ) as resp,  # fmt: skip
    ):
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        body = await resp.text()
    events = [e for e in body.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert len(events) == 4 and '"usage"' not in body


async def test_metrics_queue_grows_and_prefix_hits(sim_fleet: FleetFactory) -> None:
    # max_num_seqs 2 and slowed steps (time_scale 0.2: ~5 ms/step), so 6 requests queue up for a while.
    fleet = await sim_fleet(1, max_num_seqs=2, time_scale=0.2)
    url = fleet.urls[0]
    client = _client(url)
    async with aiohttp.ClientSession() as s:
        before = await _metrics(s, url)
        assert before["vllm:num_requests_waiting"] == 0
        tasks = [
            asyncio.create_task(
                client.completions.create(model=MODEL, prompt=f"req {i} " + PROMPT, max_tokens=40)
            )
            for i in range(6)
        ]
        seen_waiting = seen_running = 0.0
        for _ in range(200):
            m = await _metrics(s, url)
            seen_waiting = max(seen_waiting, m["vllm:num_requests_waiting"])
            seen_running = max(seen_running, m["vllm:num_requests_running"])
            if seen_waiting >= 3 and seen_running >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        assert seen_waiting >= 3 and seen_running == 2
        after = await _metrics(s, url)
        assert after["vllm:num_requests_waiting"] == 0
        assert after["vllm:generation_tokens_total"] == 240
        assert after["vllm:request_success_total[('finished_reason', 'length')]"] == 6
        assert after["vllm:time_to_first_token_seconds_count"] == 6
        assert after["vllm:e2e_request_latency_seconds_count"] == 6
        assert after["vllm:request_queue_time_seconds_count"] == 6
        assert after["vllm:inter_token_latency_seconds_count"] == 6 * 39
        hits = after["vllm:prefix_cache_hits_total"]
        await client.completions.create(model=MODEL, prompt="req 0 " + PROMPT, max_tokens=1)
        final = await _metrics(s, url)
        assert final["vllm:prefix_cache_hits_total"] > hits
        assert final["vllm:prefix_cache_queries_total"] > after["vllm:prefix_cache_queries_total"]
        info = [k for k in final if k.startswith("vllm:cache_config_info[")]
        assert len(info) == 1 and "('block_size', '16')" in info[0] and "('num_gpu_blocks', '128')" in info[0]
        assert final[info[0]] == 1.0
        assert 0.0 <= final["vllm:kv_cache_usage_perc"] <= 1.0
    await client.close()


async def test_sglang_metric_names(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, engine="sglang")
    client = _client(fleet.urls[0])
    await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    async with aiohttp.ClientSession() as s:
        m = await _metrics(s, fleet.urls[0])
    for name in ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage"):
        assert name in m
    assert m["sglang:cache_config_info[('num_pages', '128'), ('page_size', '16')]"] == 1.0
    assert m["sglang:generation_tokens_total"] == 2
    assert not any(k.startswith("vllm:") for k in m)
    await client.close()


async def test_lora_adapters(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, lora_adapters=("sql",), max_loras=2)
    url = fleet.urls[0]
    client = _client(url)
    ids = {m.id for m in (await client.models.list()).data}
    assert ids == {MODEL, "sql"}
    r = await client.completions.create(model="sql", prompt="abc", max_tokens=2)
    assert r.model == "sql"
    async with aiohttp.ClientSession() as s:
        async with s.post(
            url + "/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "/x"}
        ) as resp:
            assert resp.status == 200
        async with s.post(
            url + "/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": "/x"}
        ) as resp:
            assert resp.status == 400
        ids = {m.id for m in (await client.models.list()).data}
        assert ids == {MODEL, "sql", "chat"}
        m = await _metrics(s, url)
        assert any(k.startswith("vllm:lora_requests_info[('max_lora', '2')") for k in m)
        async with s.post(url + "/v1/unload_lora_adapter", json={"lora_name": "sql"}) as resp:
            assert resp.status == 200
        async with s.post(url + "/v1/unload_lora_adapter", json={"lora_name": "sql"}) as resp:
            assert resp.status == 404
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="sql", prompt="abc", max_tokens=2)
    await client.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "etype"),
    [
        ("POST", "/v1/completions", b"{not json", 400, "BadRequestError"),
        ("POST", "/v1/completions", b"[1, 2]", 400, "BadRequestError"),
        ("POST", "/v1/completions", b'{"prompt": "abc"}', 404, "NotFoundError"),
        ("POST", "/v1/completions", b'{"model": "nope", "prompt": "abc"}', 404, "NotFoundError"),
        ("POST", "/v1/completions", b'{"model": "sim-model"}', 400, "BadRequestError"),
        ("POST", "/v1/completions", b'{"model": "sim-model", "prompt": ""}', 400, "BadRequestError"),
        ("POST", "/v1/completions", b'{"model": "sim-model", "prompt": {"a": 1}}', 400, "BadRequestError"),
        ("POST", "/v1/completions", b'{"model": "sim-model", "prompt": "a", "max_tokens": 0}', 400,
         "BadRequestError"),
        ("POST", "/v1/completions", b'{"model": "sim-model", "prompt": "a", "max_tokens": 5000}', 400,
         "BadRequestError"),
        ("POST", "/v1/completions", b'{"model": "sim-model", "prompt": "a", "max_tokens": 2.5}', 400,
         "BadRequestError"),
        ("POST", "/v1/completions", b'{"model": "sim-model", "prompt": "a", "n": 2}', 400, "BadRequestError"),
        ("POST", "/v1/chat/completions", b'{"model": "sim-model"}', 400, "BadRequestError"),
        ("POST", "/v1/chat/completions", b'{"model": "sim-model", "messages": [1]}', 400, "BadRequestError"),
        ("GET", "/v1/completions", b"", 405, "MethodNotAllowed"),
        ("DELETE", "/v1/models", b"", 405, "MethodNotAllowed"),
        ("GET", "/no/such/path", b"", 404, "NotFoundError"),
        ("POST", "/detokenize", b'{"tokens": [-1]}', 400, "BadRequestError"),
    ],
)  # fmt: skip
async def test_error_statuses(
    sim_fleet: FleetFactory, method: str, path: str, body: bytes, status: int, etype: str
) -> None:
    fleet = await sim_fleet(1)
    async with aiohttp.ClientSession() as s, s.request(method, fleet.urls[0] + path, data=body) as resp:
        assert resp.status == status
        err = (await resp.json())["error"]
        assert err["code"] == status and err["type"] == etype and err["message"]
    # The replica still serves afterwards.
    r = await _client(fleet.urls[0]).completions.create(model=MODEL, prompt="abc", max_tokens=1)
    assert r.usage is not None and r.usage.completion_tokens == 1


async def test_whole_number_float_max_tokens_are_served(sim_fleet: FleetFactory) -> None:
    """As vLLM's lax pydantic ``int`` (qa21 F2): ``3.0`` and ``2e0`` are 3 and 2 tokens."""
    fleet = await sim_fleet(1)
    async with aiohttp.ClientSession() as s:
        for raw, want in ((b"3.0", 3), (b"2e0", 2)):
            body = b'{"model": "sim-model", "prompt": "abc", "max_tokens": ' + raw + b"}"
            async with s.post(fleet.urls[0] + "/v1/completions", data=body) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["usage"]["completion_tokens"] == want


async def test_prompt_longer_than_max_model_len(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, max_model_len=64)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 64"):
        await _client(fleet.urls[0]).completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)


async def test_peer_probe_endpoints(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1)
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/health") as resp:
            assert resp.status == 200
        for path in ("/server_info", "/get_server_info", "/model_info", "/get_model_info"):
            async with s.get(url + path) as resp:
                info = await resp.json()
                assert resp.status == 200
                assert (info["model_path"] and info["tokenizer_path"]) == str(fleet.replicas[0].tok.path)
        async with s.get(url + "/get_server_info") as resp:
            info = await resp.json()
            assert info["dp_size"] == 1 and info["max_total_num_tokens"] == 128 * 16
        async with s.get(url + "/get_load") as resp:
            load = await resp.json()
            assert load["load"] == 0 and load["num_waiting_reqs"] == 0
        async with s.post(url + "/tokenize", json={"model": MODEL, "prompt": "abc def"}) as resp:
            tok = await resp.json()
            assert tok["count"] == 2 and len(tok["tokens"]) == 2 and tok["max_model_len"] == 2048
        async with s.post(url + "/tokenize", json={"messages": [{"role": "user", "content": "abc"}]}) as resp:
            chat_tok = await resp.json()
            assert chat_tok["count"] > 2
        async with s.post(url + "/detokenize", json={"tokens": tok["tokens"]}) as resp:
            assert (await resp.json())["prompt"] == "abc def"
        async with s.post(url + "/v1/completions/render", json={"model": MODEL, "prompt": "abc def"}) as resp:
            rendered = await resp.json()
            assert isinstance(rendered, list) and rendered[0]["token_ids"] == tok["tokens"]
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "abc"}]}
        async with s.post(url + "/v1/chat/completions/render", json=chat) as resp:
            assert (await resp.json())["token_ids"] == chat_tok["tokens"]
        async with s.get(url + "/kv_event_sources") as resp:
            assert (await resp.json())["enable_kv_cache_events"] is False
        async with s.get(url + "/sim/state") as resp:
            assert (await resp.json())["running"] is True
    # Probes never enter the engine.
    assert fleet.replicas[0].engine.stats().prefix_cache_queries == 0


async def test_client_disconnect_aborts_the_request(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, time_scale=0.1)  # ~10 ms steps: 500 tokens would take ~5 s
    replica = fleet.replicas[0]
    async with aiohttp.ClientSession() as s:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 500, "stream": True}
        async with s.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
            await resp.content.readline()  # first chunk arrived: it is running
            assert replica.engine.stats().num_running == 1
    for _ in range(200):
        if replica.engine.stats().num_running == 0 and not replica._pending:
            break
        await asyncio.sleep(0.01)
    stats = replica.engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.kv_cache_usage == 0.0


async def test_stream_interval_groups_writes_but_keeps_one_chunk_per_token(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, stream_interval=4)
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 10, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(fleet.urls[0] + "/v1/completions", json=body) as resp:
        reads = [chunk async for chunk in resp.content.iter_any()]
    events = [e for e in b"".join(reads).split(b"\n\n") if e]
    assert len(events) == 11 and events[-1] == b"data: [DONE]"
    assert b'"finish_reason":"length"' in events[-2]
    assert sum(b'"finish_reason":null' in e for e in events) == 9


async def test_reset_prefix_cache_drops_cached_blocks(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1)
    client = _client(fleet.urls[0])
    await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    url = fleet.urls[0] + "/reset_prefix_cache"
    async with aiohttp.ClientSession() as session, session.post(url) as resp:
        assert resp.status == 200
    after = await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert after.usage is not None and after.usage.prompt_tokens_details is not None
    assert after.usage.prompt_tokens_details.cached_tokens == 0
    await client.close()


async def test_metrics_filtered_by_name_as_vllm(sim_fleet: FleetFactory) -> None:
    """``GET /metrics/?name[]=...`` answers only the named families, as vLLM's prometheus_client app does
    (kvgate scrapes it so; a sim that ignored it made every scrape fetch and parse the whole page)."""
    from kvgate.datalayer.mappings import filter_query, page_has_signals

    fleet = await sim_fleet(1)
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/metrics") as resp:
            whole = await resp.text()
        async with s.get(url + "/metrics/?" + (filter_query("vllm") or "")) as resp:
            assert resp.status == 200
            filtered = await resp.text()
        q = "name[]=vllm:num_requests_running&name[]=vllm:prefix_cache_queries_total"
        async with s.get(url + "/metrics/?" + q) as resp:
            two = await resp.text()
        async with s.get(url + "/metrics/") as resp:
            unfiltered = await resp.text()
    names = {f.name for f in text_string_to_metric_families(filtered)}
    assert "vllm:num_requests_running" in names and "vllm:cache_config_info" in names
    assert not any("prefix_cache" in n or "time_to_first" in n for n in names)
    assert page_has_signals(filtered, "vllm") and len(filtered) < len(whole) / 2
    # A counter asked for by its sample name (``_total``), as vs_sglang.py asks.
    assert {f.name for f in text_string_to_metric_families(two)} == {
        "vllm:num_requests_running",
        "vllm:prefix_cache_queries",
    }
    assert unfiltered == whole  # no name[]: the whole page
