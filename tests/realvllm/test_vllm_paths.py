"""vLLM's JSON paths through both doors against real vLLM servers (doors18): for each path the doors route
(``ROUTED_PATHS``), the answer through ``kvgate serve`` and through ``kvgate serve --clusters`` has the
status, shape (JSON keys or SSE event types) and usage (as the doors' token metrics read it:
``usage_from_body``, ``UsageTail``) the server gives directly; and a Responses follow-up
(``previous_response_id``; the servers keep their responses, ``VLLM_ENABLE_RESPONSES_API_STORE=1``)
lands on the server that made the response, through both doors, streamed or not, and so does its
retrieval (``GET /v1/responses/{id}``).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from kvgate.openai.request import ROUTED_PATHS
from kvgate.openai.usage import UsageTail, usage_from_body
from kvgate.realvllm import harness
from kvgate.realvllm.bench import Gateway

from .fleet import RealFleet

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(600)]

M = harness.MODEL_NAME
MSG = [{"role": "user", "content": "Say hi"}]
# A body per path (what each API reads; vLLM answers the pooling ones 404 or 400 for a generative model:
# the doors must give the same).
BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"prompt": "Hello there", "max_tokens": 3},
    "/v1/chat/completions": {"messages": MSG, "max_tokens": 3},
    "/v1/embeddings": {"input": "hi"},
    "/v1/responses": {"input": "Say hi", "max_output_tokens": 3},
    "/v1/messages": {"messages": MSG, "max_tokens": 3},
    "/v1/rerank": {"query": "q", "documents": ["a", "b"]},
    "/v2/rerank": {"query": "q", "documents": ["a", "b"]},
    "/rerank": {"query": "q", "documents": ["a", "b"]},
    "/v1/score": {"text_1": "a", "text_2": "b"},
    "/score": {"text_1": "a", "text_2": "b"},
    "/v2/embed": {"texts": ["a"], "input_type": "search_document"},
    "/pooling": {"input": "hi"},
    "/classify": {"input": "hi"},
    "/tokenize": {"prompt": "Hello there"},
    "/detokenize": {"tokens": [1, 2, 3]},
}
JSON = {"content-type": "application/json"}
STREAMED = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages")


def _shape(content_type: str, raw: bytes) -> tuple[Any, ...]:
    """What must match across doors: JSON keys (an error's type) or SSE event types, and the usage kvgate
    reads (a JSON answer's prompt and completion tokens, a stream's prompt tokens only: its completion
    count is not compared); ids, times and texts may differ."""
    if content_type.startswith("text/event-stream"):
        tail = UsageTail()
        tail.feed(raw)
        usage = tail.usage()
        kinds = sorted({line[6:].strip().decode() for line in raw.splitlines() if line.startswith(b"event:")})
        return ("sse", kinds, b"data: [DONE]" in raw, None if usage is None else usage.prompt_tokens)
    doc = orjson.loads(raw)
    usage = usage_from_body(raw)
    if "error" in doc:
        return ("error", doc["error"].get("type") if isinstance(doc["error"], dict) else None)
    return ("json", sorted(doc), None if usage is None else (usage.prompt_tokens, usage.completion_tokens))


async def _answer(base: str, path: str, body: dict[str, Any]) -> tuple[int, tuple[Any, ...]]:
    # (a JSON content type, as clients send: vLLM answers ``application/octet-stream`` 400; ``kvgate
    # serve`` sends every body it forwards as JSON, ``--clusters`` passes the client's type on)
    async with aiohttp.ClientSession() as s, s.post(base + path, data=orjson.dumps(body), headers=JSON) as r:
        return r.status, _shape(r.headers.get("content-type", ""), await r.read())


async def _global(addresses: list[str]) -> Any:
    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.serve import GlobalGateway

    clusters = tuple(ClusterSpec(f"c{i}", gateway=a) for i, a in enumerate(addresses))
    gw = GlobalGateway(ClustersConfig(clusters), "round-robin", fetch=False, seed=1)
    await gw.start("127.0.0.1", 0)
    return gw


def test_every_routed_path_answers_through_both_doors_as_directly(real_fleet: RealFleet) -> None:
    lt, server = real_fleet.lt, real_fleet.servers[0]
    gw = Gateway(lt, [server.address], "round-robin")
    mc = lt.run(_global([server.address]))
    try:
        bases = {"direct": server.url, "serve": gw.url, "clusters": f"http://127.0.0.1:{mc.port}"}
        served = []
        for path in ROUTED_PATHS:
            for stream in (False, True) if path in STREAMED else (False,):
                body = {"model": M, **BODIES[path], "temperature": 0, **({"stream": True} if stream else {})}
                got = {name: lt.run(_answer(base, path, body)) for name, base in bases.items()}
                assert got["serve"] == got["direct"] and got["clusters"] == got["direct"], (path, stream, got)
                if got["direct"][0] == 200:
                    served.append((path, stream))
        # What vLLM serves with a generative model; the pooling APIs are its 404s / 400s, passed on.
        assert {p for p, _ in served} >= set(STREAMED)
    finally:
        gw.stop()
        lt.run(mc.stop())


def test_a_responses_follow_up_lands_on_the_server_that_made_it(real_fleet: RealFleet) -> None:
    lt = real_fleet.lt
    gw = Gateway(lt, real_fleet.addresses, "round-robin")
    mc = lt.run(_global(real_fleet.addresses))

    async def chain(base: str, stream: bool) -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as s:
            body = {"model": M, "input": "Count", "max_output_tokens": 2, "stream": stream}
            async with s.post(base + "/v1/responses", data=orjson.dumps(body), headers=JSON) as r:
                raw = await r.read()
                statuses.append(r.status)
            if stream:
                first = raw.split(b"\n\n")[0].split(b"data: ", 1)[1]
                rid = orjson.loads(first)["response"]["id"]
            else:
                rid = orjson.loads(raw)["id"]
            for _ in range(2):
                body = {"model": M, "input": "more", "max_output_tokens": 2, "previous_response_id": rid}
                async with s.post(base + "/v1/responses", data=orjson.dumps(body), headers=JSON) as r:
                    statuses.append(r.status)
                    rid = (await r.json()).get("id")
            # Its retrieval (flw19): at the server that made it, through the door.
            async with s.get(f"{base}/v1/responses/{rid}") as r:
                statuses.append(r.status)
                assert r.status != 200 or (await r.json())["id"] == rid
        return statuses

    try:
        for base in (gw.url, f"http://127.0.0.1:{mc.port}"):
            for stream in (False, True):
                assert lt.run(chain(base, stream)) == [200, 200, 200, 200], (base, stream)
    finally:
        gw.stop()
        lt.run(mc.stop())
