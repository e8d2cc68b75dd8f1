"""End to end: a client request goes through the EPP, over real HTTP to the chosen model server (as
Envoy's ORIGINAL_DST cluster forwards it), and the server's reply comes back through the EPP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from kvgate.extproc import keys
from kvgate.extproc.testing import EnvoyHarness

from .upstream import Upstream, start_upstream


@pytest.fixture
async def fleet() -> AsyncIterator[list[Upstream]]:
    ups = [await start_upstream() for _ in range(3)]
    yield ups
    for up in ups:
        await up.runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _chat(model: str = "m", stream: bool = False, **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5,
                         "stream": stream, **extra})  # fmt: skip


async def test_requests_reach_the_chosen_server(start_epp, fleet, http) -> None:
    epp = await start_epp([u.address for u in fleet])
    harness = EnvoyHarness(epp.stub, http)
    h = {keys.FAIRNESS_ID: "t1", keys.DESTINATION_ENDPOINT: "10.0.0.1:1"}
    res = await harness.request("POST", "/v1/chat/completions", _chat(), h, chunk_size=10)
    assert res.status == 200
    assert orjson.loads(res.body)["usage"]["completion_tokens"] == 5
    server = next(u for u in fleet if u.address == res.destination)
    seen = server.seen[-1]
    # Control headers never reach the model server; the destination it sees is the EPP's.
    assert keys.FAIRNESS_ID not in seen["headers"]
    assert seen["headers"][keys.DESTINATION_ENDPOINT] == res.destination
    assert keys.REQUEST_ID in seen["headers"]
    assert seen["body"]["model"] == "m"
    assert all(e.inflight.requests == 0 for e in epp.store.all())


async def test_streaming_tokens_counted_and_model_rewritten_back(start_epp, fleet, http) -> None:
    epp = await start_epp(
        [u.address for u in fleet], model_rewrite=lambda m: "m-canary" if m == "m" else None
    )
    harness = EnvoyHarness(epp.stub, http)
    body = _chat(stream=True, stream_options={"include_usage": True})
    res = await harness.request("POST", "/v1/chat/completions", body)
    assert res.status == 200
    server = next(u for u in fleet if u.address == res.destination)
    assert server.seen[-1]["body"]["model"] == "m-canary"
    events = [orjson.loads(line[6:]) for line in res.body.decode().splitlines()
              if line.startswith("data: {")]  # fmt: skip
    assert events and all(ev["model"] == "m" for ev in events)
    usage = epp.picker.calls.finished[-1][2]
    assert usage.completion_tokens == 5
    assert len(epp.picker.calls.first_token) == 1


async def test_concurrent_requests_all_release(start_epp, fleet, http) -> None:
    epp = await start_epp([u.address for u in fleet])
    harness = EnvoyHarness(epp.stub, http)
    bodies = [orjson.dumps({"model": "m", "prompt": f"{i} " * 50, "max_tokens": 20, "stream": True})
              for i in range(24)]  # fmt: skip
    results = await asyncio.gather(*(harness.request("POST", "/v1/completions", b) for b in bodies))
    assert all(r.status == 200 for r in results)
    assert len(epp.picker.calls.finished) == 24
    assert all(e.inflight.requests == 0 for e in epp.store.all())


async def test_client_disconnect_mid_stream_releases_inflight(start_epp, fleet, http) -> None:
    epp = await start_epp([u.address for u in fleet])
    harness = EnvoyHarness(epp.stub, http)
    body = orjson.dumps({"model": "m", "prompt": "long one", "max_tokens": 200, "stream": True})
    res = await harness.request("POST", "/v1/completions", body, abort_after_chunks=3)
    assert res.status == 499
    for _ in range(300):
        if epp.picker.calls.finished:
            break
        await asyncio.sleep(0.01)
    assert len(epp.picker.calls.finished) == 1
    assert all(e.inflight.requests == 0 for e in epp.store.all())


async def test_server_error_reaches_client_and_counts_as_failure(start_epp, fleet, http) -> None:
    epp = await start_epp([u.address for u in fleet])
    harness = EnvoyHarness(epp.stub, http)
    res = await harness.request(
        "POST", "/v1/completions", orjson.dumps({"model": "broken-model", "prompt": "x"})
    )
    assert res.status == 500
    assert epp.picker.calls.finished[-1][3] is False


async def test_fallback_walked_when_primary_is_down(start_epp, fleet, http) -> None:
    dead = "127.0.0.1:9"  # discard port: nothing listens, the connection is refused
    epp = await start_epp([dead, fleet[0].address], fallbacks=2)
    harness = EnvoyHarness(epp.stub, http)
    for _ in range(4):
        res = await harness.request("POST", "/v1/completions", orjson.dumps({"model": "m", "prompt": "y"}))
        assert res.status == 200 and res.served == fleet[0].address
    assert all(e.inflight.requests == 0 for e in epp.store.all())


async def test_large_prompt_end_to_end(start_epp, fleet, http) -> None:
    epp = await start_epp([u.address for u in fleet])
    harness = EnvoyHarness(epp.stub, http)
    prompt = "lorem ipsum " * 18_500  # ~220 KB
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 3})
    assert len(body) > 220_000
    res = await harness.request("POST", "/v1/completions", body)
    assert res.status == 200
    server = next(u for u in fleet if u.address == res.destination)
    assert server.seen[-1]["body"]["prompt"] == prompt
    assert epp.picker.calls.requests[-1].prompt_tokens == len(prompt) // 4
