"""#16: every Responses / Anthropic body ``parse_body`` refuses, vLLM's own request models refuse too
(``ResponsesRequest``, ``AnthropicMessagesRequest``, validated in the vLLM CPU venv): kvgate's 400 is never
an answer the server would not have given. Seeded shapes of ``input``, ``instructions``, ``system``,
``messages`` and the other top-level keys kvgate reads (``_TOP_KEYS``). And on every other path kvgate
parses (``test_each_path_refuses_only_what_its_vllm_model_refuses``: each route's model, FastAPI's union).
Needs the vLLM venv (``scripts/realvllm.sh``), not the servers: in the ``realvllm`` suite (``make
test-realvllm``, CI), skipped without the venv."""

from __future__ import annotations

import random
import subprocess
from typing import Any

import orjson
import pytest

from kvgate import lifeline
from kvgate.openai.request import BodyError, kind_for_path, parse_body
from kvgate.realvllm import harness

pytestmark = pytest.mark.realvllm

RESPONSES, MESSAGES = kind_for_path("/v1/responses"), kind_for_path("/v1/messages")
_TYPES = ["message", "function_call", "function_call_output", "reasoning", "input_text", "zz", None]
_PARTS = ["input_text", "output_text", "input_image", "input_file", "text", "image", "zz"]

CHECK = """
import json, sys
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
out = []
for kind, body in json.load(sys.stdin):
    model = ResponsesRequest if kind == "responses" else AnthropicMessagesRequest
    try:
        req = model.model_validate(body)
        # (its serving's SamplingParams then refuses a limit under 1: "max_tokens must be at least 1")
        out.append(kind != "responses" or req.max_output_tokens is None or req.max_output_tokens >= 1)
    except Exception:
        out.append(False)
print(json.dumps(out))
"""


def _scalar(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, 3, -1, 1.5, "", "hi", [], {}, ["x"], {"k": 1}])


def _part(rng: random.Random) -> Any:
    if rng.random() < 0.15:
        return _scalar(rng)
    part: dict[str, Any] = {"type": rng.choice(_PARTS)}
    for key in rng.sample(["text", "image_url", "file_data", "refusal", "source"], rng.randrange(3)):
        part[key] = rng.choice(["t", "data:image/png;base64,AAAA", _scalar(rng)])
    return part


def _item(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return _scalar(rng)
    item: dict[str, Any] = {}
    if (t := rng.choice(_TYPES)) is not None:
        item["type"] = t
    for key in rng.sample(["role", "content", "call_id", "name", "arguments", "output", "summary", "id"], 4):
        if key == "role":
            item[key] = rng.choice(["user", "assistant", "system", "developer", _scalar(rng)])
        elif key in ("content", "output", "summary"):
            item[key] = rng.choice(["text", [_part(rng) for _ in range(rng.randrange(3))], _scalar(rng)])
        else:
            item[key] = rng.choice(["c1", "{}", _scalar(rng)])
    return item


# The other top-level keys kvgate reads, each API's own or another's (review s22-resp F3: a fuzz that
# fixed them never drew a chat key on /v1/responses, which kvgate refused and vLLM ignores). Not
# ``stream``, nor a boolean value: a non-bool ``stream`` and a boolean limit are kvgate's deliberate 400s
# (vLLM's lax pydantic takes ``"yes"`` / ``true``: tests/openai_request/test_shared_bodies.py,
# test_request.py::test_other_non_integers_stay_refused).
_TOP_KEYS = ["max_tokens", "max_completion_tokens", "max_output_tokens", "user", "stream_options", "n"]


def _top_keys(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    for key in rng.sample(_TOP_KEYS, rng.randrange(3)):
        body[key] = rng.choice([4, 4.0, 0, -1, 1.5, "u", None, [], {"include_usage": True}, {"k": 1}])
    return body


def _bodies(n: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(22)
    out: list[tuple[str, dict[str, Any]]] = []
    for _ in range(n):
        items = rng.choice(["hi", [_item(rng) for _ in range(rng.randrange(4))], _scalar(rng)])
        body: dict[str, Any] = {"model": "m", "input": items}
        if rng.random() < 0.5:
            body["instructions"] = rng.choice(["be brief", _scalar(rng)])
        out.append((RESPONSES, _top_keys(rng, body)))
        system = rng.choice(["be brief", [_part(rng) for _ in range(rng.randrange(3))], _scalar(rng)])
        msgs = rng.choice([[{"role": "user", "content": "hi"}], [], [_item(rng)], _scalar(rng)])
        body = {"model": "m", "max_tokens": 4, "messages": msgs, "system": system}
        out.append((MESSAGES, _top_keys(rng, body)))
    return out


def test_what_kvgate_refuses_vllm_refuses() -> None:
    if not harness.is_installed():
        pytest.skip("the vLLM venv is not installed (scripts/realvllm.sh)")
    bodies = _bodies(1500)
    refused = []
    for kind, body in bodies:
        try:
            parse_body(kind, orjson.dumps(body))
            refused.append(False)
        except BodyError:
            refused.append(True)
    assert sum(refused) > 100  # (the shapes reach the refusals at all)
    wire = orjson.dumps([["responses" if k == RESPONSES else "messages", b] for k, b in bodies])
    argv = lifeline.die_with_parent_argv([str(harness.vllm_python()), "-c", CHECK])
    done = subprocess.run(argv, input=wire, capture_output=True, timeout=300, check=True)
    taken = orjson.loads(done.stdout.splitlines()[-1])
    wrong = [b for b, r, t in zip(bodies, refused, taken, strict=True) if r and t]
    assert not wrong, wrong[:5]


# #16, every other path kvgate parses (tests/openai_request/test_keys_per_api.py's bodies, seeded): what
# FastAPI validates each body with (the route's annotation: a union for most), and the union member each
# base body is in (its errors say which top-level key vLLM refuses).
_P = "vllm.entrypoints."
_EMBED, _SCORE = _P + "pooling.embed.protocol.", _P + "pooling.scoring.protocol."
_POOL, _CLS = _P + "pooling.pooling.protocol.", _P + "pooling.classify.protocol."
_TOK = _P + "serve.tokenize.protocol."
ROUTE_MODELS = {
    "/v1/completions": _P + "openai.completion.protocol.CompletionRequest",
    "/v1/chat/completions": _P + "openai.chat_completion.protocol.ChatCompletionRequest",
    "/v1/embeddings": _EMBED + "EmbeddingRequest",
    "/pooling": _POOL + "PoolingRequest",
    "/classify": _CLS + "ClassificationRequest",
    "/score": _SCORE + "ScoreRequest",
    "/v1/score": _SCORE + "ScoreRequest",
    "/rerank": _SCORE + "RerankRequest",
    "/v1/rerank": _SCORE + "RerankRequest",
    "/v2/rerank": _SCORE + "RerankRequest",
    "/tokenize": _TOK + "TokenizeRequest",
    "/detokenize": _TOK + "DetokenizeRequest",
    "/v2/embed": _EMBED + "CohereEmbedRequest",
    "/v1/responses": _P + "openai.responses.protocol.ResponsesRequest",
    "/v1/messages": _P + "anthropic.protocol.AnthropicMessagesRequest",
}
# The union member of each of ``BASES[path]``, in order (a path of one model: that model).
MEMBERS = {
    "/v1/embeddings": [
        _EMBED + n
        for n in (
            "EmbeddingCompletionRequest",
            "EmbeddingCompletionRequest",
            "EmbeddingChatRequest",
            "EmbeddingBatchChatRequest",
            "EmbeddingChatInputRequest",
            "EmbeddingBatchChatInputRequest",
        )
    ],
    "/pooling": [
        _POOL + "PoolingCompletionRequest",
        _POOL + "PoolingChatRequest",
        _POOL + "IOProcessorRequest",
    ],
    "/classify": [_CLS + "ClassificationCompletionRequest", _CLS + "ClassificationChatRequest"],
    "/score": [_SCORE + "ScoreQueriesDocumentsRequest", _SCORE + "ScoreTextRequest"],
    "/v1/score": [_SCORE + "ScoreDataRequest"],
    "/tokenize": [_TOK + "TokenizeCompletionRequest", _TOK + "TokenizeChatRequest"],
}

CHECK_PATHS = """
import importlib, json, sys
from pydantic import TypeAdapter
def load(name):
    mod, _, attr = name.rpartition(".")
    return TypeAdapter(getattr(importlib.import_module(mod), attr))
adapters = {}
LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
out = []
for route, member, body in json.load(sys.stdin):
    route_ta = adapters.setdefault(route, load(route))
    member_ta = adapters.setdefault(member, load(member))
    try:
        req = route_ta.validate_python(body)
        # (the serving's ``SamplingParams`` then refuses ``n`` < 1 and a limit under 1)
        n = getattr(req, "n", 1)
        limits = [getattr(req, k, None) for k in LIMITS]
        taken = (n is None or n >= 1) and all(v is None or v >= 1 for v in limits)
    except Exception:
        taken = False
    keys = []
    try:
        member_ta.validate_python(body)
    except Exception as e:
        errors = getattr(e, "errors", lambda: [{"loc": ()}])()
        keys = sorted({str(err["loc"][0]) if err["loc"] else "" for err in errors})
    out.append([taken, keys])
print(json.dumps(out))
"""


def _path_bodies(n: int) -> list[tuple[str, str, dict[str, Any]]]:
    from openai_request.test_keys_per_api import _TOP, _VALUES, BASES

    rng = random.Random(23)
    out = []
    paths = sorted(BASES)
    for _ in range(n):
        path = rng.choice(paths)
        i = rng.randrange(len(BASES[path]))
        body: dict[str, Any] = {"model": "m", **BASES[path][i]}
        for key in rng.sample(_TOP, rng.randrange(4)):
            body[key] = rng.choice(_VALUES)
        out.append((path, MEMBERS.get(path, [ROUTE_MODELS[path]] * (i + 1))[i], body))
    return out


def _on_purpose(path: str, body: dict[str, Any], param: str | None) -> bool:
    """kvgate's stricter 400s (docs/gateway.md "What the picker is told"): a count written as a boolean or
    a string (vLLM's lax ``int`` takes ``true`` and ``"5"``), a ``stream`` that is not a boolean."""
    value = body.get(param) if param else None
    if param == "stream":
        return True
    return param in ("n", "max_tokens", "max_completion_tokens", "max_output_tokens") and isinstance(
        value, bool | str
    )


def _left_to_vllm(path: str, body: dict[str, Any]) -> bool:
    """A refusal kvgate leaves to the server: Anthropic's ``max_tokens`` null or missing (its model requires
    it; kvgate does not, as before: bodies without it are routed and vLLM answers its 400)."""
    return path == "/v1/messages" and body.get("max_tokens") is None


def test_each_path_refuses_only_what_its_vllm_model_refuses() -> None:
    """Each path's 400s (``parse_body``) against its route's model in the vLLM venv: a body vLLM takes is
    never refused (but for kvgate's stricter rules, ``_on_purpose``), and a body the model refuses for a key
    kvgate checks on that path (``VLLM_KEYS``) alone is refused."""
    if not harness.is_installed():
        pytest.skip("the vLLM venv is not installed (scripts/realvllm.sh)")
    from openai_request.test_keys_per_api import VLLM_KEYS

    bodies = _path_bodies(3000)
    params: list[str | bool | None] = []
    for path, _member, body in bodies:
        try:
            parse_body(kind_for_path(path), orjson.dumps(body))
            params.append(False)
        except BodyError as e:
            params.append(e.param)
    wire = orjson.dumps([[ROUTE_MODELS[p], m, b] for p, m, b in bodies])
    argv = lifeline.die_with_parent_argv([str(harness.vllm_python()), "-c", CHECK_PATHS])
    done = subprocess.run(argv, input=wire, capture_output=True, timeout=300, check=True)
    verdicts = orjson.loads(done.stdout.splitlines()[-1])
    lost, missed, refused = [], [], 0
    for (path, _m, body), param, (taken, keys) in zip(bodies, params, verdicts, strict=True):
        if param is not False:
            refused += 1
            if taken and not _on_purpose(path, body, param):  # type: ignore[arg-type]
                lost.append((path, body, param))
        elif keys and set(keys) <= VLLM_KEYS[path] and not _left_to_vllm(path, body):
            missed.append((path, body, keys))
    assert refused > 200  # (the values reach the refusals at all)
    assert not lost, lost[:5]
    assert not missed, missed[:5]
