"""``kvgate serve --clusters`` routes the paths ``kvgate serve`` routes: vLLM's other JSON APIs that name a
``model`` (``/v1/responses``, ``/v1/messages``, rerank, score, pooling, classify, ``/v2/embed``) go through
the cluster pick to the same path, with the same request model and errors (``parse_body``), and their
usage shapes (``input_tokens`` / ``output_tokens``, a Responses stream's ``response.completed``, an
Anthropic stream's ``message_start`` / ``message_delta``) are counted as ``kvgate serve`` counts them.
Before (doors18), each of these paths was a ``404 no route`` from the global gateway."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from extproc.test_error_counts import request_stats
from flowcontrol.test_doors import eventually
from gateway.backend import OTHER_PATHS, Backend
from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serve_app
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

RESPONSES_USAGE = {
    "input_tokens": 7,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 2,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 9,
}


def _event(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **doc}))


async def _responses(request: web.Request) -> web.StreamResponse:
    """vLLM's ``/v1/responses`` shapes: a JSON answer with ``usage`` after ``output``, or a stream whose
    ``response.completed`` carries it in ``response``."""
    body = await request.json()
    doc = {
        "id": "resp_1",
        "object": "response",
        "model": body["model"],
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
        "usage": RESPONSES_USAGE,
    }
    if not body.get("stream"):
        return web.json_response(doc)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_event("response.created", {"response": {**doc, "usage": None}, "sequence_number": 0}))
    await resp.write(_event("response.output_text.delta", {"delta": "hi", "sequence_number": 1}))
    await resp.write(_event("response.completed", {"response": doc, "sequence_number": 2}))
    await resp.write_eof()
    return resp


async def _messages(request: web.Request) -> web.StreamResponse:
    """vLLM's ``/v1/messages`` (Anthropic) shapes: input in ``message_start``, output in ``message_delta``."""
    body = await request.json()
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "hi"}],
                "usage": {"input_tokens": 5, "output_tokens": 3},
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    start = {
        "message": {
            "id": "msg_1",
            "role": "assistant",
            # vLLM's shape: the cached part left out of input_tokens (a prompt of 5, 4 of them cached)
            "usage": {"input_tokens": 1, "cache_read_input_tokens": 4, "output_tokens": 0},
        }
    }
    await resp.write(_event("message_start", start))
    await resp.write(
        _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    )
    await resp.write(
        _event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
    )
    await resp.write(_event("message_stop", {}))
    await resp.write_eof()
    return resp


async def _rerank(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(
        {
            "id": "r",
            "results": [{"index": 0, "relevance_score": 0.5}],
            "usage": {"prompt_tokens": 6, "total_tokens": 6},
        }
    )


@pytest.fixture
async def shapes() -> Any:
    app = web.Application()
    app.router.add_post("/v1/responses", _responses)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/rerank", _rerank)
    runner, port = await serve_app(app, access_log=None, shutdown_timeout=0.5)
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("path", OTHER_PATHS)
async def test_each_path_is_routed_through_the_pick_to_the_same_path(
    pods: Callable[..., Any], global_gateway: Callable[..., Any], path: str
) -> None:
    a, b = await pods(), await pods()
    gw: GlobalGateway = await global_gateway(
        ClusterSpec("a", gateway=a.address), ClusterSpec("b", gateway=b.address)
    )
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            body = orjson.dumps({"model": "m", "input": f"q{i}", "query": "q", "documents": ["a"]})
            async with s.post(f"http://127.0.0.1:{gw.port}{path}", data=body) as r:
                assert r.status == 200, await r.text()
                got = orjson.loads(await r.read())
                assert (got["path"], got["model"]) == (path, "m")
                assert r.headers["x-kvgate-route-mode"] == "parent"
    # Round-robin over both clusters, each request sent once, unchanged, to the same path.
    assert [len(p.received) for p in (a, b)] == [2, 2]
    for p in (a, b):
        for got_path, _headers, sent in p.received:
            assert got_path == path and sent["model"] == "m" and "stream_options" not in sent


async def test_both_doors_route_the_same_paths(global_gateway: Callable[..., Any]) -> None:
    """One path table for both doors (``ROUTED_PATHS``): the paths each front server routes to the proxy
    are its entries, read from the doors' own route tables (kvgate serve builds its own from ``PATHS`` and
    ``OTHER_PATHS``; review s18-doors L3: the test compared the table with its own definition). The test
    backend serves them all."""
    from kvgate.openai.request import OTHER_PATHS as PRODUCT_OTHER
    from kvgate.openai.request import ROUTED_PATHS

    assert OTHER_PATHS == PRODUCT_OTHER
    not_proxied = {"/v1/models", "/metrics", "/healthz", "/readyz", "/v1/clusters"}  # (GET, not routed)
    a = await Backend("a").start()
    try:
        gw: GlobalGateway = await global_gateway(ClusterSpec("a", gateway=a.address))
        assert gw.front is not None
        assert set(gw.front.routes) - not_proxied == set(ROUTED_PATHS)
        async with running_gateway(make_config([a.address])) as serve:
            assert serve.proxy is not None
            routes = serve._front(serve.proxy, admin=False).routes
            assert set(routes) - not_proxied == set(ROUTED_PATHS)
    finally:
        await a.stop()


USAGE_BODIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 4}),
    ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
    ("/v1/messages", {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
    (
        "/v1/messages",
        {"model": "m", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("/v1/rerank", {"model": "m", "query": "q", "documents": ["a"]}),
)


async def _send_usage_bodies(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        for path, body in USAGE_BODIES:
            async with s.post(base + path, data=orjson.dumps(body)) as r:
                assert r.status == 200, await r.text()
                await r.read()


async def test_usage_shapes_are_counted_as_kvgate_serve_counts_them(
    shapes: str, global_gateway: Callable[..., Any]
) -> None:
    gw: GlobalGateway = await global_gateway(ClusterSpec("c", gateway=shapes))
    await _send_usage_bodies(f"http://127.0.0.1:{gw.port}")
    await eventually(lambda: gw.inflight == 0, "the global gateway's requests ended")
    async with running_gateway(make_config([shapes])) as single:
        await _send_usage_bodies(base_url(single))
        await eventually(
            lambda: single.proxy is not None and single.proxy.inflight == 0, "its requests ended"
        )
        assert single.proxy is not None
        want = request_stats(single.proxy.metrics.registry)
    assert (
        request_stats(gw.metrics.registry)
        == want
        == {
            ("inference_objective_request_total", "m", "m"): 5,
            ("inference_objective_request_duration_seconds_count", "m", "m"): 5,
            ("inference_objective_input_tokens_count", "m", "m"): 5,
            ("inference_objective_input_tokens_sum", "m", "m"): 7 + 7 + 5 + 5 + 6,
            ("inference_objective_output_tokens_count", "m", "m"): 4,  # (rerank's 0: not observed)
            ("inference_objective_output_tokens_sum", "m", "m"): 2 + 2 + 3 + 3,
        }
    )


async def test_a_streams_unasked_usage_is_kept_for_its_class_where_its_prompt_is_read(
    shapes: str, global_gateway: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Anthropic stream ends with its usage though the client asked for none: the cluster keeps the
    request's place for the hit or miss class its cached share gives (``ClusterState._usage``), as for a
    completion that asked, when its prompt (``messages``, one full block at least) gives it a prefix
    key, and classifies it at the stream's end by that usage (``finished(cached=)``: the backend reports
    4 of 5 prompt tokens cached, a hit, counted once). A Responses request's ``input`` is a prompt too
    since #16 (resp22: ``render_responses``): kept and classified alike (4 of 7 cached, a hit); a rerank
    body has none: no key, nothing classified by its usage (review s18-doors L4: the test spied on the share
    passed to ``finished``, computed whatever happened to it, and the docs claimed Responses too; review
    s18-fixes-b I1: it checked only the place kept at dispatch, not the class counted at the end)."""
    from kvgate.multicluster import state

    kept: list[bool] = []
    ends: list[tuple[bool, float | None, int, int]] = []  # (classified at its end, cached, hits, misses)
    dispatched = state.ClusterState.dispatched
    finished = state.ClusterState.finished

    def spy(self: state.ClusterState, *args: Any, **kw: Any) -> int:
        token = dispatched(self, *args, **kw)
        kept.append(token in self._usage)
        return token

    def spy_end(self: state.ClusterState, token: int = 0, *args: Any, **kw: Any) -> None:
        sampled, before = token in self._sample, (self.hit_n, self.miss_n)
        finished(self, token, *args, **kw)
        ends.append((sampled, kw.get("cached"), self.hit_n - before[0], self.miss_n - before[1]))

    monkeypatch.setattr(state.ClusterState, "dispatched", spy)
    monkeypatch.setattr(state.ClusterState, "finished", spy_end)
    gw: GlobalGateway = await global_gateway(ClusterSpec("c", gateway=shapes))
    url = f"http://127.0.0.1:{gw.port}"
    long = "a tenant's system prompt, longer than one prefix block of sixty-four characters. " * 2
    async with aiohttp.ClientSession() as s:
        for path, body in (
            ("/v1/messages", {"model": "m", "messages": [{"role": "user", "content": long}], "stream": True}),
            ("/v1/responses", {"model": "m", "input": long, "stream": True}),
            ("/v1/rerank", {"model": "m", "query": "q", "documents": ["a"]}),
        ):
            async with s.post(url + path, data=orjson.dumps(body)) as r:
                assert r.status == 200
                await r.read()
    await eventually(lambda: gw.inflight == 0 and len(ends) == 3, "the requests settled")
    assert kept == [True, True, False], ends
    # The Anthropic and Responses streams: classified at their end by their unasked usage (a hit each,
    # counted once); the rerank by nothing.
    assert ends[0] == (True, 0.8, 1, 0)
    assert ends[1][0] and ends[1][1] == pytest.approx(4 / 7) and ends[1][2:] == (1, 0)
    assert (ends[2][0], ends[2][2], ends[2][3]) == (False, 0, 0)


async def test_errors_are_the_gateways(
    backends: Callable[..., Any], pods: Callable[..., Any], global_gateway: Callable[..., Any]
) -> None:
    """The same refusals as ``kvgate serve`` on these paths: status, error type, ``param``; nothing sent."""
    pod = await pods()
    gw: GlobalGateway = await global_gateway(ClusterSpec("c", gateway=pod.address))
    (b,) = await backends(1)
    cases: list[tuple[str, str, bytes]] = [
        ("POST", "/v1/rerank", b'{"query": "q"}'),
        ("POST", "/v1/responses", b'{"model": "m", "input": "x", "max_output_tokens": -1}'),
        ("POST", "/v1/responses", b'{"model": "m", "input": "x", "stream": 2}'),
        ("POST", "/v1/messages", b"{not json"),
        ("GET", "/v1/score", b""),
        ("POST", "/v1/audio/transcriptions", b'{"model": "m"}'),
    ]

    async def answers(base: str) -> list[tuple[int, Any, Any]]:
        out = []
        async with aiohttp.ClientSession() as s:
            for method, path, body in cases:
                async with s.request(method, base + path, data=body or None) as r:
                    err = (await r.json())["error"]  # (/v1/messages: Anthropic's, which has no param)
                    out.append((r.status, err["type"], err.get("param")))
        return out

    async with running_gateway(make_config([b.address])) as single:
        want = await answers(base_url(single))
    assert [w[0] for w in want] == [400, 400, 400, 400, 405, 404]
    assert await answers(f"http://127.0.0.1:{gw.port}") == want
    assert not pod.received and not b.received


@pytest.fixture
async def backends() -> Any:
    started: list[Backend] = []

    async def make(n: int) -> list[Backend]:
        for i in range(n):
            started.append(await Backend(f"b{i}").start())
        return started[-n:]

    yield make
    for b in started:
        await b.stop()


async def test_a_body_is_sent_as_json_whatever_type_its_client_named(
    pods: Callable[..., Any], global_gateway: Callable[..., Any]
) -> None:
    """As ``kvgate serve`` sends it: the body parsed as JSON goes on as ``application/json`` (vLLM answers
    a body of another type, or none, 400; found against the real vLLM, tests/realvllm/test_vllm_paths.py)."""
    pod = await pods()
    gw: GlobalGateway = await global_gateway(ClusterSpec("c", gateway=pod.address))
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})
    async with aiohttp.ClientSession() as s:
        for ctype in ("application/octet-stream", "text/plain", None):
            headers = {} if ctype is None else {"Content-Type": ctype}
            async with s.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=body, headers=headers) as r:
                assert r.status == 200
    assert [h["content-type"] for _p, h, _b in pod.received] == ["application/json"] * 3
