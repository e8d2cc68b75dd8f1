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
# fixed them never drew a chat key on /v1/responses, which kvgate refused and vLLM ignores).
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
_TIO = _P + "scale_out.token_in_token_out.protocol."
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
    "/v1/chat/completions/batch": _P + "openai.chat_completion.protocol.BatchChatCompletionRequest",
    "/v1/chat/completions/render": _P + "openai.chat_completion.protocol.ChatCompletionRequest",
    "/v1/completions/render": _P + "openai.completion.protocol.CompletionRequest",
    "/v1/responses/render": _P + "openai.responses.protocol.ResponsesRequest",
    "/v1/messages/render": _P + "anthropic.protocol.AnthropicMessagesRequest",
    "/v1/messages/count_tokens": _P + "anthropic.protocol.AnthropicCountTokensRequest",
    "/inference/v1/generate": _TIO + "GenerateRequest",
    "/v1/chat/completions/derender": _TIO + "DerenderChatRequestUnion",
    "/v1/completions/derender": _TIO + "DerenderCompletionRequestUnion",
    "/generative_scoring": _P + "generate.generative_scoring.serving.GenerativeScoringRequest",
    "/v1/systemone": _P + "generate.structured_decisions.protocol.StructuredDecisionRequest",
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
    picked = None
    try:
        req = route_ta.validate_python(body)
        picked = type(req).__name__
        # (the serving's ``SamplingParams`` then refuses ``n`` < 1 and a limit under 1)
        # (the model's own fields: ``extra="allow"`` keeps any other key as an attribute too)
        fields = type(req).model_fields
        n = getattr(req, "n", 1) if "n" in fields else 1
        limits = [getattr(req, k, None) for k in LIMITS if k in fields]
        taken = (n is None or n >= 1) and all(v is None or v >= 1 for v in limits)
    except Exception:
        taken = False
    keys = []
    try:
        if member is not None:  # (None: a body whose prompt keys were drawn, its member unknown)
            adapters.setdefault(member, load(member)).validate_python(body)
    except Exception as e:
        errors = getattr(e, "errors", lambda: [{"loc": ()}])()
        keys = sorted({str(err["loc"][0]) if err["loc"] else "" for err in errors})
    out.append([taken, keys, picked])
print(json.dumps(out))
"""


# The prompt-carrying keys of the pooling paths' unions (``_pooling_prompt``: review s23-rev-keys23 F1, F3)
# and values of each shape their members read, or not.
_PROMPT_PATHS = ("/v1/embeddings", "/pooling", "/classify")
_MSGS = [{"role": "user", "content": "hi"}]
_PROMPT_VALUES: dict[str, list[Any]] = {
    "input": [None, 5, "hi", [], [[]], [1, 2], [1.0, 2.0], [1.5], [True], [[1], [2.0]], ["a", "b"], _MSGS,
              [_MSGS, _MSGS], {"x": 1}],
    "messages": [None, 5, "x", [], _MSGS, [_MSGS, _MSGS], [{"role": "user", "content": 5}],
                 [{"content": "x"}], [{"role": "user"}], [5], {"x": 1}],
    "data": [None, {"x": 1}, 5, "x"],
}  # fmt: skip


def _path_bodies(n: int) -> list[tuple[str, str | None, dict[str, Any]]]:
    from openai_request.test_keys_per_api import _TOP, _VALUES, BASES

    rng = random.Random(23)
    out: list[tuple[str, str | None, dict[str, Any]]] = []
    paths = sorted(BASES)
    for k in range(n):
        # (every fourth body on a pooling path: their unions' prompt keys drawn below, half the time)
        path = rng.choice(paths if k % 4 else _PROMPT_PATHS)
        i = rng.randrange(len(BASES[path]))
        body: dict[str, Any] = {"model": "m", **BASES[path][i]}
        for key in rng.sample(_TOP, rng.randrange(4)):
            body[key] = rng.choice(_VALUES)
        member: str | None = MEMBERS.get(path, [ROUTE_MODELS[path]] * (i + 1))[i]
        if path in _PROMPT_PATHS and rng.random() < 0.5:
            body = {k: v for k, v in body.items() if k not in _PROMPT_VALUES}
            keys = rng.choice([["input"], ["messages"], ["input", "messages"], ["input", "messages"]])
            for key in keys + (["data"] if rng.random() < 0.25 else []):
                body[key] = rng.choice(_PROMPT_VALUES[key])
            member = None
        out.append((path, member, body))
    return out


def _on_purpose(path: str, body: dict[str, Any], param: str | None) -> bool:
    """kvgate's stricter 400s (docs/gateway.md "What the picker is told"): an empty token list or prompt, or
    a boolean id. (A count written as a boolean or a string, a ``stream`` as a string: read as vLLM's lax
    pydantic reads them since qa32a Q1.)"""
    value = body.get(param) if param else None
    if param == "input" and isinstance(value, list):
        # (token ids: an empty list or prompt, or a boolean id, stays a 400, as on completions)
        flat = [w for v in value for w in (v if isinstance(v, list) else [v])]
        return not value or [] in value or any(type(v) is bool for v in flat)
    return False


def _left_to_vllm(path: str, body: dict[str, Any]) -> bool:
    """A refusal kvgate leaves to the server: Anthropic's ``max_tokens`` null or missing (its model requires
    it; kvgate does not, as before: bodies without it are routed and vLLM answers its 400)."""
    return path in ("/v1/messages", "/v1/messages/render") and body.get("max_tokens") is None


def test_each_path_refuses_only_what_its_vllm_model_refuses() -> None:
    """Each path's 400s (``parse_body``) against its route's model in the vLLM venv: a body vLLM takes is
    never refused (but for kvgate's stricter rules, ``_on_purpose``), and a body the model refuses for a key
    kvgate checks on that path (``VLLM_KEYS``) alone is refused."""
    if not harness.is_installed():
        pytest.skip("the vLLM venv is not installed (scripts/realvllm.sh)")
    from openai_request.test_keys_per_api import UNREAD, VLLM_KEYS

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
    lost, missed, refused, wrong_prompt, both = [], [], 0, [], 0
    for (path, _m, body), param, (taken, keys, picked) in zip(bodies, params, verdicts, strict=True):
        if param is not False:
            refused += 1
            if taken and not _on_purpose(path, body, param):  # type: ignore[arg-type]
                lost.append((path, body, param))
            continue
        checked = VLLM_KEYS[path] - UNREAD.get(path, frozenset())
        if keys and set(keys) <= checked and not _left_to_vllm(path, body):
            missed.append((path, body, keys))
        if path in _PROMPT_PATHS and picked and _plain(body) and {"input", "messages"} <= body.keys():
            both += 1
            if not _same_prompt(path, body, picked):
                wrong_prompt.append((path, body, picked))
    assert refused > 200  # (the values reach the refusals at all)
    assert both > 40, both  # (bodies with both prompt keys that vLLM takes: its union's pick is checked)
    assert not lost, lost[:5]
    assert not missed, missed[:5]
    assert not wrong_prompt, [
        (p, {k: b.get(k, "-") for k in _PROMPT_VALUES}, m) for p, b, m in wrong_prompt
    ]  # (review s23-rev-keys23 F3)


def _plain(body: dict[str, Any]) -> bool:
    """A body whose union member kvgate means to pick as vLLM does: no ``data``, no whole-float ids, no
    conversation in ``input``. With those, pydantic's smart union weighs each member's exactness (a lax
    ``2.0`` id, an extra key kept by ``IOProcessorRequest``, the chat members' message models): a ``data``
    beside a good prompt, float ids beside an empty ``messages``, a conversation in both keys may be
    another member there; kvgate reads the prompt that reads (docs/scheduling.md)."""
    inp = body.get("input")
    flat = [w for v in inp for w in (v if isinstance(v, list) else [v])] if isinstance(inp, list) else []
    # (a conversation in ``input`` beside a ``messages``: the chat members' exactness decides, left so)
    return "data" not in body and not any(type(w) in (float, dict) for w in flat)


def _same_prompt(path: str, body: dict[str, Any], picked: str) -> bool:
    """Whether kvgate's prompt is the one of the union member vLLM picked: a completion member reads
    ``input`` alone, a chat member ``messages`` (``*ChatInput*``: ``input``), a plugin ``data`` none."""
    if picked.endswith("CompletionRequest") or "ChatInput" in picked:
        keep = "input"
    elif "Chat" in picked:
        keep = "messages"
    else:
        keep = None
    alone = {"model": "m", keep: body[keep]} if keep else {"model": "m", "data": {}}
    got = parse_body(kind_for_path(path), orjson.dumps(body))
    try:
        want = parse_body(kind_for_path(path), orjson.dumps(alone))
    except BodyError as e:
        # (an empty prompt or a boolean id, kvgate's 400 on purpose alone, ``_on_purpose``: vLLM's picked
        # prompt is empty, its serving's to refuse; kvgate reading the other key instead is left so)
        assert _on_purpose(path, alone, e.param), (path, body, picked, e)
        return True
    return (got.prompt_text, got.token_ids) == (want.prompt_text, want.token_ids)


ROUTES = """
import importlib, inspect, json, pkgutil, sys, typing
import vllm.entrypoints as ep
from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel
READ = set(json.loads(sys.argv[1]))
def members(ann):
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Annotated:
        return members(args[0])
    if args:
        return [m for a in args for m in members(a)]
    return [ann] if isinstance(ann, type) and issubclass(ann, BaseModel) else []
def load(name):
    mod, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(mod), attr)
routes = {}
for info in pkgutil.walk_packages(ep.__path__, ep.__name__ + "."):
    if not info.name.endswith("api_router"):
        continue
    for obj in vars(importlib.import_module(info.name)).values():
        if isinstance(obj, APIRouter):
            for r in obj.routes:
                if not isinstance(r, APIRoute) or "POST" not in r.methods:
                    continue
                p = inspect.signature(r.endpoint).parameters.get("request")
                ms = members(p.annotation) if p is not None else []
                if ms:
                    keys = sorted(READ & {f for m in ms for f in m.model_fields})
                    routes[r.path] = [sorted(m.__qualname__ for m in ms), keys]
table = {p: sorted(m.__qualname__ for m in members(load(n))) for p, n in json.load(sys.stdin).items()}
print(json.dumps([routes, table]))
"""
# vLLM routes kvgate does not parse as JSON: multipart forms (``/v1/audio/*``).
NOT_JSON = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})


def test_the_key_table_is_vllms_routes() -> None:
    """Every JSON POST route of vLLM's routers (its module-level ``APIRouter``s, each route's ``request``
    annotation) is in kvgate's table (``kind_for_path`` knows it), the default suite's ``VLLM_KEYS`` holds
    exactly those paths with the keys their models define among those kvgate reads, and ``ROUTE_MODELS``
    names each route's own model (review s23-rev-keys23 F2, F5: the hand tables are checked here)."""
    if not harness.is_installed():
        pytest.skip("the vLLM venv is not installed (scripts/realvllm.sh)")
    from openai_request.test_keys_per_api import VLLM_KEYS

    read = [
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "user",
        "stream",
        "stream_options",
    ]
    argv = lifeline.die_with_parent_argv(
        [str(harness.vllm_python()), "-c", ROUTES, orjson.dumps(read).decode()]
    )
    done = subprocess.run(
        argv, input=orjson.dumps(ROUTE_MODELS), capture_output=True, timeout=300, check=True
    )
    routes, table = orjson.loads(done.stdout.splitlines()[-1])
    json_routes = {p: v for p, v in routes.items() if p not in NOT_JSON}
    assert set(json_routes) == set(VLLM_KEYS) == set(ROUTE_MODELS)
    assert [p for p in json_routes if kind_for_path(p) == "other"] == []
    assert {p: set(keys) for p, (_m, keys) in json_routes.items()} == VLLM_KEYS
    assert {p: models for p, (models, _k) in json_routes.items()} == table


def test_the_review_bodies_are_vllms_verdicts() -> None:
    """tests/openai_request/test_s23_keys_review.py's bodies: ``TAKEN`` each taken by its route's model,
    ``REFUSED`` each refused by it."""
    if not harness.is_installed():
        pytest.skip("the vLLM venv is not installed (scripts/realvllm.sh)")
    from openai_request.test_s23_keys_review import REFUSED, TAKEN

    bodies = [(p, None, {"model": "m", **b}) for p, b in TAKEN] + [
        (p, None, {"model": "m", **b}) for p, b, _k in REFUSED
    ]
    wire = orjson.dumps([[ROUTE_MODELS[p], m, b] for p, m, b in bodies])
    argv = lifeline.die_with_parent_argv([str(harness.vllm_python()), "-c", CHECK_PATHS])
    done = subprocess.run(argv, input=wire, capture_output=True, timeout=300, check=True)
    taken = [t for t, _k, _p in orjson.loads(done.stdout.splitlines()[-1])]
    assert taken == [True] * len(TAKEN) + [False] * len(REFUSED), list(zip(bodies, taken, strict=True))
