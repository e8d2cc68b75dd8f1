"""Both front doors read a body the same way: one InferenceRequest, and the same 400s.

The same bodies go through ``kvgate serve`` (the gateway, over HTTP) and ``kvgate epp`` (over the
ext_proc stream, with the Envoy-playing client forwarding to the backend), both configured from one
gateway config (adapters, objectives, a non-default session header). The requests their pickers
receive must be identical except for what is per door by design: request ids, arrival times and the
header map plugins see (Envoy's pseudo-headers exist only behind the EPP).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.conftest import RecordingPicker
from gateway.backend import Backend
from gateway.conftest import make_config, make_pools
from kvgate.config.gateway import GatewayConfig
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.gateway.server import GatewayServer
from kvgate.openai.request import MAX_NESTING
from kvgate.scheduling.types import InferenceRequest, PickResult

SESSION_HEADER = "x-conversation"


class Recorder(RecordingPicker):
    """The EPP tests' recorder, with the gateway's ``explain`` argument."""

    def pick(self, req: InferenceRequest, explain: bool = False) -> PickResult:  # type: ignore[override]
        self.calls.requests.append(req)
        return self.inner.pick(req, explain) if explain else self.inner.pick(req)

    async def admit(
        self, req: InferenceRequest, explain: bool = False, wait_max: float | None = None
    ) -> PickResult:
        return self.pick(req, explain)


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "iVBOR" * 4000}}
# (path, body, extra headers)
BODIES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    (COMPLETIONS, {"model": "m", "prompt": "Once upon a time", "max_tokens": 7}, {}),
    (COMPLETIONS, {"model": "m", "prompt": ["first line", "second line"], "n": 3}, {}),  # (6 sequences)
    (COMPLETIONS, {"model": "m", "prompt": [101, 2023, 2003, 1037, 3231], "max_tokens": 3}, {}),
    (COMPLETIONS, {"model": "m", "prompt": [[1, 2, 3], [4, 5]]}, {}),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}, {}),
    (
        CHAT,
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, IMAGE]}]},
        {SESSION_HEADER: "conv-42"},
    ),
    (CHAT, {"model": "sql-lora", "messages": [{"role": "user", "content": "SELECT"}], "user": "u1"}, {}),
    # (#16: ``max_completion_tokens`` is chat's, not in vLLM's ``CompletionRequest``: ignored, not read)
    (COMPLETIONS, {"model": "sql-lora", "prompt": "x", "max_tokens": 5, "max_completion_tokens": -9}, {}),
    (
        COMPLETIONS,
        {"model": "m", "prompt": "urgent"},
        {"x-gateway-inference-objective": "gold", "x-gateway-inference-fairness-id": "tenant-a"},
    ),
    ("/v1/embeddings", {"model": "m", "input": "embed me"}, {}),
    ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 11}, {}),  # s17-qafix-d F4
    # qa21 F2: whole-number floats, as vLLM's lax pydantic takes them.
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "f"}], "max_completion_tokens": 64.0}, {}),
    ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 12.0}, {}),
    # #16 (resp22): a Responses body's ``instructions`` + ``input`` items, Anthropic's ``system``.
    (
        "/v1/responses",
        {
            "model": "m",
            "instructions": "Answer briefly.",
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "look"}, {**IMAGE, "type": "input_image"}],
                },
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "done"},
            ],
        },
        {},
    ),
    (
        "/v1/messages",
        {
            "model": "m",
            "system": [{"type": "text", "text": "Be terse."}],
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 9,
        },
        {},
    ),
    # #16: an embeddings conversation (vLLM's ``EmbeddingChatRequest``) with keys its model lacks (``stream``
    # is not read: JSON comes back), a rerank body with chat keys (not read, not checked).
    (
        "/v1/embeddings",
        {"model": "m", "messages": [{"role": "user", "content": "embed"}], "stream": True, "max_tokens": -1},
        {},
    ),
    ("/v1/rerank", {"model": "m", "query": "q", "documents": ["a"], "messages": 5, "stream_options": 1}, {}),
]

DEEP = "[" * 1000 + "]" * 1000
# (path, raw body, the parameter the 400 must name)
BAD_BODIES: list[tuple[str, bytes, str]] = [
    (COMPLETIONS, b'{"model": "m", "prompt": [1, -2, 3]}', "prompt"),
    (COMPLETIONS, b'{"model": "m", "prompt": [1, 2147483648]}', "prompt"),
    (COMPLETIONS, b'{"model": "m", "prompt": [1, 2.5]}', "prompt"),
    (COMPLETIONS, b'{"model": "m", "prompt": "x", "n": 0}', "n"),
    (CHAT, f'{{"model": "m", "messages": [{{"role": "user", "content": {DEEP}}}]}}'.encode(), "messages"),
    (
        CHAT,
        f'{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "tools": {DEEP}}}'.encode(),
        "tools",
    ),
    (
        CHAT,
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -3}',
        "max_completion_tokens",
    ),
    ("/v1/rerank", b'{"model": "m", "query": "q", "documents": ["a"], "user": 5}', "user"),
    ("/v1/embeddings", b'{"model": "m", "messages": 5}', "messages"),
    (CHAT, b'{"model": "m", "messages": []}', "messages"),
    (COMPLETIONS, b'{"model": "m", "prompt": "x", "stream": "maybe"}', "stream"),
    ("/v1/responses", b'{"model": "m", "input": "x", "max_output_tokens": -1}', "max_output_tokens"),
    ("/v1/responses", b'{"model": "m", "input": ["x"]}', "input"),  # (#16: vLLM refuses it too)
    ("/v1/responses", b'{"model": "m", "input": "x", "instructions": 7}', "instructions"),
    (
        "/v1/messages",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "system": 7}',
        "system",
    ),
    (
        CHAT,
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 512.5}',
        "max_tokens",
    ),
]


def _config(address: str) -> GatewayConfig:
    return make_config(
        [address],
        policy="kvgate",
        adapters=("sql-lora",),
        extra={"sessionHeader": SESSION_HEADER.upper(), "objectives": [{"name": "gold", "priority": 5}]},
    )


class Doors:
    def __init__(self, gw: GatewayServer, gw_picker: RecordingPicker, harness: EnvoyHarness,
                 epp_picker: RecordingPicker, http: aiohttp.ClientSession) -> None:  # fmt: skip
        self.gw, self.gw_picker, self.harness, self.epp_picker, self.http = (
            gw,
            gw_picker,
            harness,
            epp_picker,
            http,
        )

    async def gateway(self, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.gw.port}{path}"
        async with self.http.post(
            url, data=raw, headers={"content-type": "application/json", **headers}
        ) as r:
            return r.status, await r.read()

    async def epp(self, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        res = await self.harness.request("POST", path, raw, headers)
        return res.status, res.body


@pytest.fixture
async def doors() -> AsyncIterator[Doors]:
    backend = await Backend("b0").start()
    cfg = _config(backend.address)
    pools = make_pools(cfg)
    gw_picker = Recorder(pools[0].director)  # type: ignore[arg-type]
    pools[0].director = gw_picker  # type: ignore[assignment]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    store = EndpointStore.from_addresses([backend.address])
    ctx = build_context(EppConfig(pool=cfg.pools[0], gateway=cfg), store, clock=time.monotonic)
    epp_picker = RecordingPicker(ctx.director)  # type: ignore[arg-type]
    ctx.director = epp_picker
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=0, metrics_port=0))
    await epp.start()
    ch = channel(f"127.0.0.1:{epp.port}")
    async with aiohttp.ClientSession() as http:
        yield Doors(gw, gw_picker, EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http), epp_picker, http)
    await ch.close()
    await epp.stop(0)
    await gw.stop(drain_timeout=1.0)
    await backend.stop()


def _comparable(req: InferenceRequest) -> dict[str, Any]:
    d = asdict(req)
    for per_door in ("request_id", "arrival_time", "headers"):
        d.pop(per_door)
    return d


async def test_same_bodies_give_identical_inference_requests(doors: Doors) -> None:
    for path, body, headers in BODIES:
        raw = orjson.dumps(body)
        gw_status, _ = await doors.gateway(path, raw, headers)
        epp_status, _ = await doors.epp(path, raw, headers)
        assert (gw_status, epp_status) == (200, 200), (path, body)
    gw_reqs, epp_reqs = doors.gw_picker.calls.requests, doors.epp_picker.calls.requests
    assert len(gw_reqs) == len(epp_reqs) == len(BODIES)
    for (_path, body, _h), g, e in zip(BODIES, gw_reqs, epp_reqs, strict=True):
        assert _comparable(g) == _comparable(e), body
    # And they carry what the bodies and headers said (not two identical wrong answers).
    by_body = dict(zip((orjson.dumps(b) for _p, b, _h in BODIES), gw_reqs, strict=True))
    tokens = by_body[orjson.dumps(BODIES[2][1])]
    assert (tokens.token_ids, tokens.prompt_text, tokens.max_tokens) == ([101, 2023, 2003, 1037, 3231], "", 3)
    assert by_body[orjson.dumps(BODIES[3][1])].token_ids == [1, 2, 3, 4, 5]  # (a batch: its prompts joined)
    assert by_body[orjson.dumps(BODIES[1][1])].sequences == 6  # (2 prompts x n: qa21 F5)
    image = by_body[orjson.dumps(BODIES[5][1])]  # (a 20 KB image: a digest, 576 tokens: qa21 F4)
    assert len(image.prompt_text) < 2_500 and image.prompt_tokens < 600  # (its 576 tokens' characters)
    assert image.body_bytes == len(orjson.dumps(BODIES[5][1]))  # (flow control's size: fixes-a M2)
    assert by_body[orjson.dumps(BODIES[5][1])].session_key == "conv-42"
    lora = by_body[orjson.dumps(BODIES[6][1])]
    assert (lora.lora_adapter, lora.session_key) == ("sql-lora", "u1")
    both = by_body[orjson.dumps(BODIES[7][1])]
    assert (both.lora_adapter, both.max_tokens) == ("sql-lora", 5)
    gold = by_body[orjson.dumps(BODIES[8][1])]
    assert (gold.priority, gold.fairness_id) == (5, "tenant-a")
    assert by_body[orjson.dumps(BODIES[0][1])].prompt_text == "Once upon a time"
    assert by_body[orjson.dumps(BODIES[10][1])].max_tokens == 11
    assert by_body[orjson.dumps(BODIES[11][1])].max_tokens == 64  # (``64.0``: qa21 F2)
    assert by_body[orjson.dumps(BODIES[12][1])].max_tokens == 12
    # #16: the Responses body's instructions and items, the Anthropic body's system, are its prompt.
    embed = by_body[orjson.dumps(BODIES[-2][1])]
    # (no output: charged none, s23-rev-keys23 F6)
    assert (embed.prompt_text, embed.stream, embed.max_tokens) == ("<|user|>\nembed\n", False, 0)
    assert by_body[orjson.dumps(BODIES[-1][1])].prompt_text == ""
    resp = by_body[orjson.dumps(BODIES[13][1])]
    assert resp.prompt_text.startswith("<|system|>\nAnswer briefly.\n<|user|>\nlook<|media:")
    assert "done" in resp.prompt_text and "iVBOR" not in resp.prompt_text
    assert 576 < resp.prompt_tokens < 700  # (the image's 576 and the text's)
    anthropic = by_body[orjson.dumps(BODIES[14][1])]
    assert (anthropic.prompt_text, anthropic.max_tokens) == ("<|system|>\nBe terse.\n<|user|>\nhi\n", 9)


@pytest.mark.parametrize(("path", "raw", "param"), BAD_BODIES, ids=[f"{p}:{n}" for p, _r, n in BAD_BODIES])
async def test_bad_bodies_are_a_400_naming_the_parameter_from_both_doors(
    doors: Doors, path: str, raw: bytes, param: str
) -> None:
    for door in (doors.gateway, doors.epp):
        status, body = await door(path, raw, {})
        assert status == 400, (door.__name__, body[:200])
        err = orjson.loads(body)["error"]
        if path == "/v1/messages":  # (Anthropic's shape, no ``param``: its message names it; s23-qa F3 Low)
            assert param in err["message"] and err["type"] == "invalid_request_error", (door.__name__, err)
            continue
        assert err["param"] == param and err["type"] == "invalid_request_error", (door.__name__, err)
    assert MAX_NESTING < 1000
    assert not doors.gw_picker.calls.requests and not doors.epp_picker.calls.requests
