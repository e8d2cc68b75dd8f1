"""Parse an OpenAI request body once and describe it for the scheduler: one ``InferenceRequest``.

Both front doors call ``parse_body`` then ``inference_request``, so a body means the same thing behind
``kvgate serve`` and behind ``kvgate epp`` (tests/openai/test_shared_bodies.py holds them to it). Every
way a body can be wrong is a ``BodyError`` (400) naming the parameter, never a crash further down: token
ids are checked to be what a tokenizer can emit, and nesting is bounded before anything re-encodes the
body (orjson refuses to encode past 254 levels; a 500 is not an answer to a client's mistake).

Each API path reads and checks only the top-level keys its vLLM request model defines (``_API_KEYS``; vLLM
ignores the others, so a 400 on one would refuse a body the server takes): chat's limits are
``max_completion_tokens`` then ``max_tokens`` (the newer OpenAI name wins; vLLM reads them in that order),
completions' and Anthropic Messages' ``max_tokens``, the Responses API's ``max_output_tokens``; a limit must
be a non-negative integer (Messages: positive), written as one or as a whole-number float (``512.0``,
``1e2``: vLLM's lax pydantic models take them; ``512.5`` is refused). Embeddings, pooling, classify, score
and rerank define ``user`` only (no ``stream``: their answer is JSON); tokenize, detokenize and Cohere's
``/v2/embed`` none; vLLM 0.32's other routes (the chat batch, the render paths, ``/inference/v1/generate``,
...: ``CHAT_BATCH`` and below) their own. A path kvgate does not know (``OTHER``) is read with every API's
keys. The limit is the model's default when none is sent (completions' 16), and 0 on a path that decodes
nothing (embeddings, pooling, scoring, tokenize, render: ``_Keys.output``), so it is charged no output.

The Responses API (``RESPONSES``: ``instructions`` + ``input``, ``render_responses``) and Anthropic
Messages (``MESSAGES``: ``system`` + ``messages``) are rendered like chat, so both doors estimate and
prefix-score them (they were ``OTHER`` bodies with no prompt text, no estimate, before).

A request is as many sequences as vLLM runs for it (``sequences``): ``n`` choices of each prompt of a
completions batch (a ``prompt`` list), so the in-flight accounting weighs it as the server will run it.
``n`` must be an integer of at least 1 (as vLLM's ``SamplingParams``); the weight is counted up to
``MAX_SEQUENCES``. A chat content part of a media type (an image, audio, a file: ``MEDIA_TYPES``) stands
in the prefix text as a digest of the part repeated to ``MEDIA_PART_TOKENS``' worth of characters, so it
counts that many in the prompt estimate (not its bytes) and fills as many prefix blocks; past a request's
``MAX_LONG_MEDIA_PARTS``-th the digest alone stands in the text (a bound on it), and the estimate still
counts ``MEDIA_PART_TOKENS`` for the part.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import Any, ClassVar

import orjson
import xxhash

from kvgate.openai.protocol import DEFAULT_FAIRNESS_ID, DEFAULT_SESSION_HEADER
from kvgate.scheduling.prefix import CHARS_PER_TOKEN
from kvgate.scheduling.types import InferenceRequest

COMPLETIONS = "completions"
CHAT = "chat"
EMBEDDINGS = "embeddings"
# A body whose API kvgate does not know (a path other than the three below): only ``model`` is required.
OTHER = "other"
PATHS = {COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions", EMBEDDINGS: "/v1/embeddings"}
# vLLM's other JSON POST APIs whose body names the ``model`` (its entrypoints' routers): ``kvgate serve``
# routes them as ``OTHER`` bodies through the same pick (``kvgate epp`` passes every path already).
# ``/tokenize`` and ``/detokenize`` too (``model`` is optional at vLLM: the doors route by it, so it is
# required here as on the others). Not here: ``GET /v1/responses/{id}`` and ``POST .../cancel`` (routed
# to the server that made the response: ``gateway.lookups``), ``/v1/audio/*`` (multipart forms, not JSON).
OTHER_PATHS = (
    "/v1/responses",
    "/v1/messages",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/score",
    "/score",
    "/v2/embed",
    "/pooling",
    "/classify",
    "/tokenize",
    "/detokenize",
)
# Every JSON POST path a door routes through the pick: the three APIs kvgate reads, then ``OTHER_PATHS``.
# ``kvgate serve`` and ``kvgate serve --clusters`` both route exactly these (one table, no second copy).
ROUTED_PATHS = (*PATHS.values(), *OTHER_PATHS)
# The ``OTHER_PATHS`` whose event streams end with their usage unasked (no ``stream_options``): the
# Responses API's ``response.completed``, Anthropic Messages' ``message_start`` / ``message_delta``.
STREAM_USAGE_PATHS = frozenset({"/v1/responses", "/v1/messages"})
# ``GET /v1/models/{id}`` (the openai SDK's ``models.retrieve``): one entry of ``GET /v1/models``, both doors.
MODELS_PREFIX = "/v1/models/"
# Two ``OTHER_PATHS`` whose prompt kvgate reads (``render_responses``; ``render_chat`` with ``system``):
# kinds of their own, so a ``prompt`` or ``input`` key means what their API says (a Responses body's
# ``prompt`` is a template object, not a completions prompt). Not in ``PATHS`` (routes, usage stripping).
RESPONSES = "responses"
MESSAGES = "messages"
# The other ``OTHER_PATHS``, by what their vLLM request models define (#16: each path checks only those
# keys): ``/pooling`` and ``/classify`` (``input`` or ``messages``, ``user``); the scoring APIs, score and
# rerank (``user``; their texts estimated, never refused: ``_score_estimate``); and the ones whose models
# define none of the keys kvgate reads (``/tokenize`` and ``/detokenize`` run no model, so no prompt is
# read; Cohere's ``/v2/embed``, whose ``max_tokens`` truncates the input: it is no output limit).
POOLING = "pooling"
SCORE = "score"
BARE = "bare"
# vLLM 0.32's paths outside ``ROUTED_PATHS`` (``kvgate epp`` parses every path; review s23-rev-keys23 F2):
# ``/v1/chat/completions/batch`` (``BatchChatCompletionRequest``: ``messages`` is a list of conversations,
# chat's limits, ``n``, ``user``, no ``stream``); the render paths (their parent API's model, its keys
# checked, but they run no model: no prompt read, no output, the answer JSON whatever ``stream``);
# ``/inference/v1/generate`` (``GenerateRequest``: ``token_ids`` the prompt, the limit in
# ``sampling_params``, ``stream``). ``/v1/messages/count_tokens`` (``AnthropicCountTokensRequest``: none
# of the keys kvgate reads; it runs no model) is ``BARE``, as is
# ``/generative_scoring`` (label probabilities: no decode); the derender paths read ``stream`` only and run
# no model; ``/v1/systemone`` (``StructuredDecisionRequest``) reads none but decodes (``PLAIN``).
CHAT_BATCH = "chat-batch"
GENERATE = "generate"
RENDER_CHAT = "render-chat"
RENDER_COMPLETIONS = "render-completions"
RENDER_RESPONSES = "render-responses"
RENDER_MESSAGES = "render-messages"
_RENDERS = frozenset({RENDER_CHAT, RENDER_COMPLETIONS, RENDER_RESPONSES, RENDER_MESSAGES})
DERENDER = "derender"
PLAIN = "plain"
_KIND_BY_PATH = {path: kind for kind, path in PATHS.items()} | {
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
    "/pooling": POOLING,
    "/classify": POOLING,
    "/v1/score": SCORE,
    "/score": SCORE,
    "/v1/rerank": SCORE,
    "/v2/rerank": SCORE,
    "/rerank": SCORE,
    "/tokenize": BARE,
    "/detokenize": BARE,
    "/v2/embed": BARE,
    "/v1/chat/completions/batch": CHAT_BATCH,
    "/v1/chat/completions/render": RENDER_CHAT,
    "/v1/completions/render": RENDER_COMPLETIONS,
    "/v1/responses/render": RENDER_RESPONSES,
    "/v1/messages/render": RENDER_MESSAGES,
    "/v1/messages/count_tokens": BARE,
    "/inference/v1/generate": GENERATE,
    "/v1/chat/completions/derender": DERENDER,
    "/v1/completions/derender": DERENDER,
    "/generative_scoring": BARE,
    "/v1/systemone": PLAIN,
}

# Deepest JSON nesting accepted anywhere in a body. Real chat bodies (messages -> content parts -> image
# url objects, tool schemas) stay well under it; orjson cannot re-encode past 254.
MAX_NESTING = 64
# Token ids are non-negative and fit an int32 (every tokenizer vocabulary does; prefix hashing packs them).
TOKEN_ID_LIMIT = 1 << 31
_BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark
MAX_TOKENS_KEYS = ("max_completion_tokens", "max_tokens")  # precedence order
# An ``OTHER`` body's too: the Responses API (``/v1/responses``, vLLM's ``ResponsesRequest``) names its
# limit ``max_output_tokens`` (review s17-qafix-d F4); Anthropic's ``/v1/messages`` says ``max_tokens``.
OTHER_MAX_TOKENS_KEYS = (*MAX_TOKENS_KEYS, "max_output_tokens")


@dataclass(frozen=True, slots=True)
class _Keys:
    """The top-level keys kvgate reads that an API's vLLM request model defines: only these are read and
    checked. vLLM ignores a key its model lacks (``extra="allow"``, or pydantic's ``ignore``), so a 400 on
    one refuses a body the server takes (review s22-resp F1; #16 for the other paths)."""

    limits: tuple[str, ...] = ()  # output limits, in precedence order
    user: bool = False  # a non-string ``user`` is a 400 (else ignored, as the session fallback)
    stream: bool = False  # ``stream`` read (a boolean); else the answer is JSON, never a stream
    stream_options: bool = False
    choices: bool = False  # ``n``
    null_n: bool = True  # ``n: null`` read as 1 (chat's ``int | None``; completions' ``int`` refuses it)
    least: int = 0  # the smallest limit (Anthropic's ``max_tokens`` must be positive: its model's 400)
    # The limit when none is sent, as vLLM's model defaults it: ``CompletionRequest.max_tokens = 16`` (and
    # its ``normalize_null_max_tokens`` maps null to 16); None: unknown (the picker's estimate).
    default: int | None = None
    output: bool = True  # False: the path decodes nothing (embeddings, pooling, score, render): limit 0


# Read from vLLM 0.32's models (``CompletionRequest`` has no ``max_completion_tokens``; the pooling and
# scoring models, ``PoolingBasicRequestMixin``, only ``user``; ``ResponsesRequest`` ``max_output_tokens``,
# ``user``, ``stream``; ``AnthropicMessagesRequest`` ``max_tokens``, ``stream``). ``OTHER`` (a path kvgate
# does not know, ``kvgate epp`` only) keeps every API's keys: its model is unknown.
_API_KEYS: dict[str, _Keys] = {
    COMPLETIONS: _Keys(("max_tokens",), True, True, True, True, null_n=False, default=16),
    CHAT: _Keys(MAX_TOKENS_KEYS, True, True, True, True),
    EMBEDDINGS: _Keys(user=True, output=False),
    POOLING: _Keys(user=True, output=False),
    SCORE: _Keys(user=True, output=False),
    BARE: _Keys(output=False),
    RESPONSES: _Keys(("max_output_tokens",), user=True, stream=True),
    MESSAGES: _Keys(("max_tokens",), stream=True, least=1),
    OTHER: _Keys(OTHER_MAX_TOKENS_KEYS, True, True, True),
    CHAT_BATCH: _Keys(MAX_TOKENS_KEYS, True, choices=True),
    GENERATE: _Keys(stream=True, stream_options=True, default=16),
    RENDER_CHAT: _Keys(MAX_TOKENS_KEYS, True, True, True, True, output=False),
    RENDER_COMPLETIONS: _Keys(("max_tokens",), True, True, True, True, null_n=False, output=False),
    RENDER_RESPONSES: _Keys(("max_output_tokens",), user=True, stream=True, output=False),
    RENDER_MESSAGES: _Keys(("max_tokens",), stream=True, least=1, output=False),
    DERENDER: _Keys(stream=True, output=False),
    PLAIN: _Keys(),
}
# pydantic's lax ``int`` takes a whole float only below 2**63 (``1e19`` is vLLM's 400 too; orjson reads an
# integer past 64 bits as a float): past it, a float stays refused (review s21-cpu F1).
_LAX_INT_LIMIT = float(1 << 63)
# The rest of pydantic v2's lax mode (vLLM's request models are not strict; pydantic-core's
# ``str_as_int``, ``str_as_bool``), held to pydantic itself by
# tests/openai_request/test_lax_fields_qa32.py. A string integer: Unicode White_Space around it, a sign,
# ASCII digits (an underscore between two), an optional ``.0...`` (``"5.0"``; ``"5."``, ``"1e2"`` refused),
# at most ``_LAX_INT_DIGITS`` digits after leading zeros (Python's ``int`` limit, which pydantic meets too).
_LAX_INT_TEXT = re.compile(r"([+-]?)0*([0-9](?:_?[0-9])*)(?:\.0+)?")
_LAX_INT_DIGITS = 4300
# (Unicode's White_Space, which pydantic-core's Rust ``trim`` strips: Python's ``isspace`` but \x1c-\x1f)
_WHITE_SPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and c not in "\x1c\x1d\x1e\x1f")
# (a string integer past 64 bits stands as the nearest 64-bit one: what a JSON number can say here, so
# nothing further down meets an integer a float cannot hold; vLLM's own limits refuse such a value)
_INT64_MAX = (1 << 63) - 1
_LAX_BOOLS = {"true": True, "t": True, "yes": True, "y": True, "on": True, "1": True,
              "false": False, "f": False, "no": False, "n": False, "off": False, "0": False}  # fmt: skip


def lax_int(value: Any) -> int | None:
    """``value`` as pydantic's lax ``int`` reads it (None: pydantic refuses it): an integer, a boolean (0, 1),
    a whole-number float below 2**63, or a string integer (``"5"``, ``" 5"``, ``"5.0"``, ``"1_000"``)."""
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is bool:
        return 1 if value else 0
    if kind is float:
        return int(value) if value.is_integer() and abs(value) < _LAX_INT_LIMIT else None
    if kind is str:
        m = _LAX_INT_TEXT.fullmatch(value.strip(_WHITE_SPACE))
        if m is None or len(digits := m.group(2).replace("_", "")) > _LAX_INT_DIGITS:
            return None
        n = int(digits) if m.group(1) != "-" else -int(digits)
        return max(-_INT64_MAX - 1, min(n, _INT64_MAX))
    return None


def lax_bool(value: Any) -> bool | None:
    """``value`` as pydantic's lax ``bool`` reads it (None: pydantic refuses it): a boolean, 0 or 1 (an
    integer or a float), or ``true/false/t/f/yes/no/y/n/on/off/1/0`` in any case (no space around)."""
    kind = type(value)
    if kind is bool:
        return bool(value)
    if (kind is int or kind is float) and value in (0, 1):
        return value == 1
    if kind is str:
        return _LAX_BOOLS.get(value.lower())
    return None


# The most sequences one request is counted as (``n`` x prompts): vLLM's default bound on ``n``
# (``VLLM_MAX_N_SEQUENCES``, 16,384: a larger ``n`` is its 400). Only the weight is bounded; the body goes
# on as sent (a server configured for more decides).
MAX_SEQUENCES = 16_384
# A chat content part of a media type (``image_url`` with a base64 data URL, ``input_audio``, a video, a
# file) in the prompt estimate: its bytes say nothing of its tokens (a 300 KB image is not 100k tokens:
# review s21-qa F4). 576 is LLaVA-1.5's count for every image (a 336 px square in 14 px patches: 24 x 24;
# llava-hf/llava-1.5-7b-hf ``config.json``); vision models range from under a hundred (low-detail tiles) to
# thousands (Qwen2-VL's grow with the resolution). The server's usage, when it comes, is the real count.
MEDIA_PART_TOKENS = 576
# Its rendering's length (``_media``): as many characters as the estimate reads as its tokens.
MEDIA_PART_CHARS = MEDIA_PART_TOKENS * CHARS_PER_TOKEN
# A request's first this many media parts are rendered that long, later ones as their tag alone: the
# rendering of a body stays within a bound whatever its parts (``{"type":"image"}`` is 17 bytes of body and
# was 2,304 characters of prompt text, 50,000 of them 115 M characters held for the request's life: review
# s21-fixes-c F1): 64 x 2,304 characters (147 KB) + ``MEDIA_TAG_CHARS`` per later part (a part is at least
# 16 bytes of body with its comma, ``{"type":"file"}``, so about 1.65x its bytes at most: review s22-media
# L4). The estimate counts every part ``MEDIA_PART_TOKENS``
# (``parse_body`` adds what a tag-only part's text lacks: review s22-rev22a F1).
MAX_LONG_MEDIA_PARTS = 64
# A media part's tag, ``<|media:H|>`` (``H`` 16 hex digits): its length whatever the part.
MEDIA_TAG_CHARS = 26
# Those types: OpenAI chat's (``image_url``, ``input_audio``, ``file``), vLLM's own (``audio_url``,
# ``video_url``, ``image_embeds``, ``audio_embeds``), the Responses API's (``input_image``, ``input_file``)
# and Anthropic Messages' (``image``, ``document``). Other parts without text (``tool_use``,
# ``tool_result``, ``refusal``) are text to a model: rendered as their JSON, as before.
MEDIA_TYPES = frozenset({
    "image_url", "input_audio", "file", "audio_url", "video_url", "image_embeds", "audio_embeds",
    "input_image", "input_file", "image", "document",
})  # fmt: skip


# A part ``type`` the ``MEDIA_TYPES`` lookup cannot hash: a 400 of its own (review s22-resp F5).
_UNHASHABLE = (list, dict)


class _RenderError(ValueError):
    """A body's prompt cannot be rendered: the caller's 400, naming the key the prompt is in. Only these
    (not any ``TypeError``: ``orjson.JSONEncodeError`` is ``TypeError``) are the client's mistake."""


class _Unencodable(_RenderError):
    pass


class _PartTypeError(_RenderError):
    pass


def _dumps(value: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError as e:  # (orjson's own error only: nothing else runs in this call)
        raise _Unencodable(f"cannot be encoded: {e}") from None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _dumps(value).decode()


def media_budget() -> list[int]:
    """A request's media budget, shared by every part it renders: [full-length parts left, tag-only parts
    rendered] (``_media``)."""
    return [MAX_LONG_MEDIA_PARTS, 0]


def render_chat(
    messages: list[dict[str, Any]], tools: Any = None, system: Any = None, budget: list[int] | None = None
) -> str:
    """A chat request as the text the prefix scorers hash (and tokenize): a deterministic stand-in for
    the model's chat template, so two chats sharing a system prompt (or earlier turns) share a prefix.

    ``<|tools|>`` JSON first when present (templates put tools in the system prompt), then per message
    ``<|role|>`` + newline + its text (content parts' texts joined; a media part, ``MEDIA_TYPES``: an image,
    audio, as ``_media``; a part with a ``content`` list of its own, e.g. Anthropic's ``tool_result``, as
    its other keys' JSON then its parts, read alike; other parts and keys, e.g. ``tool_calls``, as JSON) +
    newline. Earlier messages never depend on later ones. Anthropic Messages' top-level ``system`` (a
    string or text blocks) is a ``<|system|>`` message after the tools, as vLLM puts it first.
    ``budget`` (``media_budget``, a fresh one when None) counts the media parts left at full length and
    the tag-only ones.
    """
    out = []
    if budget is None:
        budget = media_budget()
    if tools:
        out.append(f"<|tools|>\n{_text(tools)}\n")
    if system:
        out.append(f"<|system|>\n{_content(system, budget)}\n")
    for m in messages:
        # (the usual shapes without a call: string content and role, no other keys; review s22-rev22a F4)
        content, role = m.get("content"), m.get("role", "")
        text = content if type(content) is str else "" if content is None else _content(content, budget)
        if len(m) > ("role" in m) + ("content" in m):
            text += _text({k: v for k, v in m.items() if k not in ("role", "content")})
        out.append(f"<|{role if type(role) is str else _text(role)}|>\n{text}\n")
    return "".join(out)


# The keys of a Responses ``input`` item (not a message) that hold its text or parts, read in this order:
# a reasoning item's ``summary`` and ``content``, a ``function_call_output``'s ``output`` (a string or
# parts: an image in it is a media part, not its base64 as JSON).
_ITEM_TEXT_KEYS = ("summary", "content", "output")


def render_responses(
    instructions: str | None,
    items: str | list[dict[str, Any]],
    tools: Any = None,
    budget: list[int] | None = None,
) -> str:
    """A Responses API request (``instructions`` + ``input``) as prefix text, on ``render_chat``'s
    principles: ``<|tools|>`` first, ``instructions`` as a ``<|system|>`` message (vLLM makes it the
    system message), a string ``input`` as one ``<|user|>`` message, then per item of an ``input`` list:

    - a message (``type`` ``message`` or absent, with a ``role``): ``<|role|>`` + its content, as a chat
      message's (``input_text`` / ``output_text`` parts' texts, ``input_image`` / ``input_file`` as
      ``_media``). Its ``id``, ``status`` and ``type`` are left out: the model never sees them, and an
      assistant turn sent back as an output item or as an easy message is one prefix.
    - any other item (``function_call``, ``function_call_output``, ``reasoning``, ... and types kvgate does
      not know): ``<|type|>`` + its other keys' JSON with sorted keys (a client rebuilding an item in
      another key order keeps its prefix), then its ``_ITEM_TEXT_KEYS`` as content. Unknown types are
      rendered, not refused or skipped: a newer server may take them, and what the model reads is priced.

    Each item renders alone (earlier items never depend on later ones): a follow-up repeating the history
    shares the first turn's prefix. The request's media budget (``MAX_LONG_MEDIA_PARTS``: ``budget``, as
    ``render_chat``'s) spans all items.
    """
    return responses_lead(instructions, tools) + _responses_items(items, budget)


def responses_lead(instructions: str | None, tools: Any = None) -> str:
    """A Responses request's own head, ``render_responses``'s start: its tools and ``instructions``. vLLM
    0.32 never carries these into a follow-up (``construct_input_messages``: the follow-up's own
    instructions first, every earlier system message dropped), so a kept turn leaves them out
    (``openai.responses``)."""
    out = []
    if tools:
        out.append(f"<|tools|>\n{_text(tools)}\n")
    if instructions:
        out.append(f"<|system|>\n{instructions}\n")
    return "".join(out)


def _responses_items(items: str | list[dict[str, Any]], budget: list[int] | None = None) -> str:
    """``render_responses``'s ``input`` part."""
    out = []
    if budget is None:
        budget = media_budget()
    if isinstance(items, str):
        out.append(f"<|user|>\n{items}\n")
        return "".join(out)
    for item in items:
        role = item.get("role")
        kind = item.get("type", "message")
        if role is not None and kind == "message":
            out.append(f"<|{_text(role)}|>\n{_content(item.get('content'), budget)}\n")
            continue
        rest = {k: v for k, v in item.items() if k != "type" and k not in _ITEM_TEXT_KEYS}
        text = [_dumps(rest, orjson.OPT_SORT_KEYS).decode()] if rest else []
        text.extend(_content(item[k], budget) for k in _ITEM_TEXT_KEYS if k in item)
        out.append(f"<|{_text(kind)}|>\n{''.join(text)}\n")
    return "".join(out)


def _content(value: Any, budget: list[int]) -> str:
    """A message's (or item's) content: a part list's texts joined (``_parts``), a string as is, null
    empty, anything else its JSON."""
    if isinstance(value, list):
        parts: list[str] = []
        _parts(value, parts, budget)
        return "".join(parts)
    return "" if value is None else _text(value)


def _media(part: dict[str, Any], budget: list[int]) -> str:
    """A media part as ``MEDIA_PART_CHARS`` of text: ``<|media:H|>`` repeated, ``H`` the xxh3-64 digest of
    its JSON with sorted keys (the same image from two clients is one prefix; another image another). As
    long as the estimate says (``MEDIA_PART_TOKENS`` at ``CHARS_PER_TOKEN``), so it fills the prefix blocks
    its tokens fill at the server: the same image with another question shares them (review s21-fixes-a
    M1), and the cost scorer's per-block weight stays the estimate's."""
    tag = f"<|media:{xxhash.xxh3_64_hexdigest(_dumps(part, orjson.OPT_SORT_KEYS))}|>"
    if budget[0] <= 0:  # past ``MAX_LONG_MEDIA_PARTS``: the tag alone (still one prefix per image)
        budget[1] += 1
        return tag
    budget[0] -= 1
    return (tag * (MEDIA_PART_CHARS // len(tag) + 1))[:MEDIA_PART_CHARS]


def _parts(content: list[Any], out: list[str], budget: list[int]) -> None:
    """A content list's parts into ``out`` (a part's own ``content`` list alike: nesting is bounded by
    ``MAX_NESTING`` before any rendering)."""
    for p in content:
        if isinstance(p, dict):
            t = p.get("text")
            if isinstance(t, str):
                out.append(t)
            elif isinstance(kind := p.get("type"), _UNHASHABLE):  # (vLLM's models refuse it too)
                raise _PartTypeError("a content part's 'type' must be a string")
            elif kind in MEDIA_TYPES:
                out.append(_media(p, budget))
            elif isinstance(inner := p.get("content"), list):
                out.append(_text({k: v for k, v in p.items() if k != "content"}))
                _parts(inner, out, budget)
            else:
                out.append(_text(p))
        else:
            out.append(_text(p))


class BodyError(ValueError):
    """The body cannot be served as sent (400); ``param`` names the offending parameter."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ShareFull(BodyError):
    """A body refused because the bodies waiting for the thread (and on it) hold over half the body budget,
    and this one would take its client's past its share, or all clients' past three quarters of the budget
    (``kvgate.httpfront.offload.off_loop``, which re-exports it): 429, retry once they are parsed. A
    ``BodyError``, so each door answers it as its own parse errors, with this status. Defined here, not in
    ``offload``: compiled, ``BodyError`` is a native class, whose methods refuse an instance of a subclass
    defined in an interpreted module (``ShareFull.__init__``'s ``super().__init__``: a 500)."""

    status: ClassVar[int] = 429

    def __init__(self, held: int, size: int, bound: int, everyone: bool = False) -> None:
        whose = "all clients'" if everyone else "this client's"
        what = "three quarters of the body budget" if everyone else "the client's share of the body budget"
        super().__init__(
            f"the request bodies waiting to be parsed hold over half the body budget, {whose} {held} bytes; "
            f"this one's {size} would pass {what} ({bound} bytes: limits.maxWaitingBytesPerClient; kvgate "
            "epp: a quarter of --max-buffered-bytes, fixed): retry after they are answered"
        )


@dataclass(slots=True)
class ParsedBody:
    kind: str
    body: dict[str, Any]
    model: str
    stream: bool = False
    # Text that prefix matching hashes (completions: prompt; chat: ``render_chat``; embeddings, pooling,
    # classify: the input, or its conversations rendered as chats).
    prompt_text: str = ""
    token_ids: list[int] | None = None
    max_tokens: int | None = None
    user: str | None = None
    # The client asked for the final usage chunk itself (so it must not be stripped).
    client_wants_usage: bool = False
    # Estimated prompt tokens (every prompt of a batch): the token ids' count, else len(prompt_text) // 4
    # with every chat media part as ``MEDIA_PART_CHARS`` of it (``MEDIA_PART_TOKENS``; past the
    # ``MAX_LONG_MEDIA_PARTS``-th its text is the tag alone, the estimate counts it full).
    prompt_tokens: int = 0
    # Sequences the server runs for it: ``n`` x the prompts of a completions batch (at most MAX_SEQUENCES).
    sequences: int = 1
    # The body's length as received: flow control's size (``InferenceRequest.body_bytes``).
    body_bytes: int = 0
    # A Responses body: the characters of ``prompt_text``'s start that are its tools and ``instructions``
    # (``responses_lead``), which vLLM does not carry into a follow-up.
    lead_chars: int = 0


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """What configuration adds to a body: adapter names, the session header, objective priorities."""

    adapters: frozenset[str] = frozenset()
    session_header: str = DEFAULT_SESSION_HEADER
    objectives: Mapping[str, int] = field(default_factory=dict)
    pass_priority: bool = False  # pools[].passPriority (``server_priority``)


def server_priority(body: dict[str, Any], policy: RequestPolicy, objective: str | None) -> bool:
    """With ``pools[].passPriority``: write the request's InferenceObjective priority into ``body`` as
    vLLM's ``priority`` (lower runs first, so negated: an objective's higher is more important), in
    place of any the client sent (the objective decides, not the client). True when ``body`` changed.
    Priority 0 is written only over a client's own value (vLLM's default is 0)."""
    if not policy.pass_priority:
        return False
    prio = policy.objectives.get(objective, 0) if objective else 0
    if not prio and "priority" not in body:
        return False
    body["priority"] = -prio
    return True


def kind_for_path(path: str) -> str:
    """The API a request path names (query string ignored): the three APIs', ``RESPONSES``,
    ``MESSAGES``, ``POOLING``, ``SCORE``, ``BARE``; ``OTHER`` for any other."""
    return _KIND_BY_PATH.get(path.split("?", 1)[0].rstrip("/"), OTHER)


def kind_for_suffix(path: str) -> str:
    """``kind_for_path``, else the kind of the longest table path ``path`` ends with at a ``/``: how
    ``kvgate epp``'s ``openai-parser`` claims its paths, by suffix as llm-d-router's parsers do
    (``request.MatchPathSuffix``), so ``/openai/v1/chat/completions`` (a route that keeps a prefix) is a
    chat completion (rev-b34 F7). The front doors route the exact paths only (``kind_for_path``)."""
    p = path.split("?", 1)[0].rstrip("/")
    kind = _KIND_BY_PATH.get(p)
    i = p.find("/", 1)
    while kind is None and i != -1:  # (longest suffix first; a table path starts with "/")
        kind = _KIND_BY_PATH.get(p[i:])
        i = p.find("/", i + 1)
    return OTHER if kind is None else kind


def _token_ids(value: list[Any], param: str) -> list[int] | None:
    """``value`` as token ids, None when it is not an all-int list; out-of-range ids are a 400."""
    if not value:
        return value
    # C-speed passes (a 2k-token prompt: ~30 us instead of ~150 us with per-item generators).
    if (types := set(map(type, value))) != {int}:
        # Whole-number floats (``[1.0, 2.0]``) are ids to vLLM's lax ``list[int]`` (review s23-rev-keys23
        # F1); a boolean stays refused, as for a limit (stricter on purpose).
        if not types <= {int, float} or not all(v.is_integer() for v in value if type(v) is float):
            return None
        value = [int(v) for v in value]
    if min(value) < 0 or max(value) >= TOKEN_ID_LIMIT:
        raise BodyError(f"'{param}' token ids must be integers in [0, {TOKEN_ID_LIMIT - 1}]", param)
    return value


def _prompt(value: Any, param: str) -> tuple[str, list[int] | None, int, int]:
    """Completions ``prompt`` / embeddings ``input``: a string, strings, token ids, or lists of ids.

    Returns (text, token ids, estimated tokens, prompts). A batch (a list of strings or of token lists):
    the estimate counts every prompt (the server computes them all), and prefix matching hashes them all
    joined, strings and token ids alike: a cached first prompt is its share of the batch cached, not the
    whole batch (review s21-fixes-a L4).
    """
    if isinstance(value, str):
        return value, None, len(value) // 4, 1
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            text = "\n".join(value)
            return text, None, len(text) // 4, len(value)
        ids = _token_ids(value, param)
        if ids is not None:
            return "", ids, len(ids), 1
        if all(isinstance(v, list) and v for v in value):
            batch = [_token_ids(v, param) for v in value]
            if all(b is not None for b in batch):
                joined = list(chain.from_iterable(b for b in batch if b is not None))
                return "", joined, len(joined), len(value)
    raise BodyError(f"'{param}' must be a string, a list of strings, or token ids", param)


def _completions_prompt(body: dict[str, Any]) -> tuple[str, list[int] | None, int, int] | None:
    """A completions body's ``prompt`` as ``_prompt`` reads it; None when it has only ``prompt_embeds``
    (vLLM's embedding input, ``--enable-prompt-embeds``: base64 tensors the gateway does not decode, so no
    prompt text and no estimate). Neither (absent or null): vLLM's ``validate_prompt_and_prompt_embeds``
    400, its message. (An empty ``prompt`` string is the server's to refuse, as before.)"""
    prompt = body.get("prompt")
    if prompt is not None:
        return _prompt(prompt, "prompt")
    if not _embeds_count(body.get("prompt_embeds")):
        raise BodyError("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    return None


def _embeds_count(embeds: Any) -> int:
    """The prompts a ``prompt_embeds`` holds (``bytes | list[bytes]``: one, or one each; vLLM refuses any
    other type itself)."""
    if embeds is None:
        return 0
    return len(embeds) if isinstance(embeds, list) else 1


def _choices(body: dict[str, Any], null: bool) -> int:
    """``n``: the choices asked for each prompt (1 when absent, or null where ``null``); an integer of at
    least 1, written as one or as a whole-number float below 2**63 (vLLM's lax pydantic ``int`` takes
    ``2.0``), else a 400."""
    n = body.get("n")
    if n is None and null:
        return 1
    return _at_least_one(n, "n")


def _at_least_one(n: Any, key: str) -> int:
    """A count of sequences: an integer of at least 1 (or a whole-number float below 2**63), else a 400."""
    count = lax_int(n)
    if count is None or count < 1:
        raise BodyError(f"'{key}' must be an integer of at least 1", key)
    return count


# ``_nested_over``'s tables: every byte but the brackets and quotes deleted; then an opening bracket as
# byte 1 and a closing one as byte 255 (-1 as a signed byte).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
_AS_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
# Levels removed by whole-bytes passes first (most bodies' containers are leaves or one above: ``{}``
# messages, ``{"type": ...}`` parts), before the running sum walks what is left.
_LEAF_PASSES = 2
# A string once escapes are dropped (no quote inside): cut out in C, no object per string (review s22-media
# M1: ``split`` made one per quote, 30x the body for 8 MiB of short strings).
_STRING = re.compile(rb'"[^"]*"')


def more_than(raw: bytes | bytearray, units: bytes, limit: int) -> bool:
    """Whether ``raw`` holds more than ``limit`` of the bytes ``units`` together. Stops at ``limit + 1``
    found: ``find`` is memchr, where ``count`` of one byte walks every byte in a plain loop (~1 GB/s: a
    220 KB prompt's six counts were most of the EPP's CPU per request, review qa36c-F2)."""
    left = limit
    for unit in units:
        pos = raw.find(unit)
        while pos >= 0:
            left -= 1
            if left < 0:
                return True
            pos = raw.find(unit, pos + 1)
    return False


def _nested_over(raw: bytes | bytearray, limit: int) -> bool:
    """Whether valid JSON ``raw`` nests containers more than ``limit`` deep, in C-speed passes over its
    bytes (``_too_deep`` walks every node in Python: 3 s for 2.8M ``{}``, review s22-rev22a F4): escaped
    backslashes then escaped quotes dropped (left to right, as JSON pairs them), every byte but brackets
    and quotes deleted, strings (now quotes around brackets alone) cut out. Each of ``_LEAF_PASSES``
    passes removing the empty pairs (``[]``, ``{}``) takes off one level (the innermost containers), then
    the running sum of +1 an opening and -1 a closing bracket peaks at what depth is left. Exact for valid
    JSON and ``limit`` >= 2 (review s22-media L5: at 1 a leaf pass takes an inner level too)."""
    s = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_BRACKETS)
    if b'"' in s:
        # Strings without brackets (now ``""``) first, in one C pass: two adjacent strings merging keeps
        # every bracket on its side of the quotes; then what strings are left (brackets inside them).
        s = _STRING.sub(b"", s.replace(b'""', b""))
    s = s.translate(_AS_STEPS)
    for _ in range(_LEAF_PASSES):
        s = s.replace(b"\x01\xff", b"")
    return bool(s) and max(accumulate(memoryview(s).cast("b"))) > limit - _LEAF_PASSES


def _deep_key(body: dict[str, Any]) -> str | None:
    """The top-level key whose value nests past ``MAX_NESTING`` (the body's object is level 1), read from
    each value's bytes as ``_nested_over`` reads a body's; None when none does (a repeated key's value,
    which orjson dropped)."""
    for key, value in body.items():
        if isinstance(value, dict | list):
            try:
                enc = orjson.dumps(value)
            except orjson.JSONEncodeError:  # (nested past what orjson writes: 254)
                return key
            if _nested_over(enc, MAX_NESTING - 1):
                return key
    return None


def _too_deep(body: dict[str, Any]) -> str | None:
    """The top-level key under which nesting exceeds ``MAX_NESTING`` (None when it does not), by a walk
    over the parsed body: the reference the tests hold the bytes' check (``_nested_over``) to."""
    for key, value in body.items():
        stack: list[tuple[Any, int]] = [(value, 2)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_NESTING:
                return key
            if isinstance(node, dict):
                stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
            elif isinstance(node, list):
                stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return None


def _fails(system: Any) -> bool:
    """Whether Anthropic's ``system`` alone fails to render (which key a render error names: it is
    rendered before the messages)."""
    if not isinstance(system, list):
        return False
    try:
        _content(system, [0, 0])
    except _RenderError:
        return True
    return False


def _responses_prompt(body: dict[str, Any], budget: list[int]) -> tuple[str, int]:
    """A Responses API body's prompt text (``render_responses``) and its lead's length (``responses_lead``).
    Refused (400, the key named) only where vLLM's ``ResponsesRequest`` refuses too: ``input`` neither a
    string nor a list, an item that is not an object, ``instructions`` not a string. Items it would refuse
    for their shape (an unknown ``type``, a message without content) are rendered: a newer server may take
    them."""
    items = body.get("input")
    if items == {}:  # (vLLM lists an iterable ``input``: ``{}`` is no items, a non-empty object its keys)
        items = []
    if not isinstance(items, str | list):
        raise BodyError("'input' must be a string or a list of input items", "input")
    if isinstance(items, list) and not all(isinstance(i, dict) for i in items):
        raise BodyError("'input' items must be objects", "input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BodyError("'instructions' must be a string", "instructions")
    try:
        rest = _responses_items(items, budget)
    except _RenderError as e:
        raise BodyError(f"'input': {e}", "input") from None
    lead = responses_lead(instructions, body.get("tools"))
    return lead + rest, len(lead)


def _conversations(value: Any, batch: bool) -> list[list[Any]] | None:
    """``value`` as chat conversations: one (a list of message objects), or with ``batch`` a non-empty list
    of non-empty ones (vLLM's ``EmbeddingBatchChatRequest``); None when it is neither."""
    if not isinstance(value, list):
        return None
    if all(isinstance(m, dict) for m in value):
        return [value]
    if (
        batch
        and value
        and all(isinstance(c, list) and c and all(isinstance(m, dict) for m in c) for c in value)
    ):
        return value
    return None


def _chat_like(convs: list[list[Any]]) -> bool:
    """Whether vLLM's union would read these conversations as its chat member rather than fall back to
    ``input`` (review s23-rev-keys23 F3): each non-empty, each message with a ``role`` and a string, list or
    null ``content`` (``messages: []`` or ``content: 5`` beside a good ``input``: vLLM embeds ``input``)."""
    return all(
        c and all("role" in m and isinstance(m.get("content"), str | list | None) for m in c) for c in convs
    )


def _pooling_prompt(body: dict[str, Any], embeddings: bool) -> tuple[str, list[int] | None, int]:
    """An embeddings / pooling / classify body's prompt (text, token ids, estimate). vLLM's model for
    these is a union: ``input`` as a completions prompt (a string, strings, token ids), or a conversation
    in ``messages`` (rendered as a chat's); embeddings also take a batch of conversations in ``messages``
    and one or a batch in ``input`` (``EmbeddingChatInputRequest``), ``/pooling`` a plugin's ``data``
    (``IOProcessorRequest``, any other keys allowed: no prompt). The member vLLM picks is the prompt: a
    chat-like ``messages`` (``_chat_like``), else a readable ``input``, else any list of message objects
    in ``messages``, else ``data``; a 400 (naming the key) only when none reads (review s23-rev-keys23 F1:
    a stray ``input`` or ``messages`` beside ``data`` is vLLM's to take)."""
    convs = _conversations(body.get("messages"), embeddings)
    if convs is not None and ("input" not in body or _chat_like(convs)):
        return _rendered(convs, "messages")
    error: BodyError | None = None
    if "input" in body:
        inp = body["input"]
        if embeddings and isinstance(inp, list) and inp and (chats := _conversations(inp, True)) is not None:
            return _rendered(chats, "input")
        try:
            text, token_ids, estimate, _ = _prompt(inp, "input")
            return text, token_ids, estimate
        except BodyError as e:
            error = e
    if convs is not None:
        return _rendered(convs, "messages")
    if "data" in body:  # (``/pooling``'s plugin request: nothing to read; the server decides)
        return "", None, 0
    if error is not None:
        raise error
    if "messages" in body:
        raise BodyError("'messages' must be a list of message objects", "messages")
    raise BodyError("'input' is required", "input")


# The scoring APIs' pairs of inputs, in vLLM 0.32's ``ScoreRequest`` union order
# (``ScoreQueriesDocumentsRequest``, ``ScoreQueriesItemsRequest``, ``ScoreDataRequest``,
# ``ScoreTextRequest``: the first a body carrying two pairs is read as, checked with its pydantic), then
# rerank's.
_SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


def _score_estimate(body: dict[str, Any]) -> tuple[int, int]:
    """A score / rerank body's (prompt tokens, sequences), read, never refused (the server's 400 answers a
    bad one: then 0, 1, as before). Each side a ``ScoreInput`` (a string, or a content object: its text
    parts and ``MEDIA_PART_TOKENS`` per media part) or a list of them; the server scores one against each
    of the other (1 to N) or pairwise (N to N): each pair is one sequence of both texts (a cross-encoder's
    input; a bi-encoder embeds each text once: counted as its pairs too, an upper bound)."""
    if "query" in body:
        first, second = body.get("query"), body.get("documents")
    else:
        pair = next((p for p in _SCORE_PAIRS if p[0] in body and p[1] in body), None)
        if pair is None:
            return 0, 1
        first, second = body[pair[0]], body[pair[1]]
    budget = media_budget()
    try:
        a = [_score_text(x, budget) for x in (first if isinstance(first, list) else [first])]
        b = [_score_text(x, budget) for x in (second if isinstance(second, list) else [second])]
    except _RenderError:
        return 0, 1
    if not a or not b or (len(a) != 1 and len(a) != len(b)):
        return 0, 1
    chars = len(b) * a[0] + sum(b) if len(a) == 1 else sum(a) + sum(b)
    tokens = (chars + budget[1] * (MEDIA_PART_CHARS - MEDIA_TAG_CHARS)) // CHARS_PER_TOKEN
    return tokens, min(len(b), MAX_SEQUENCES)


def _score_text(item: Any, budget: list[int]) -> int:
    """One ``ScoreInput``'s characters (a media part as ``MEDIA_PART_CHARS``: ``_media``)."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return len(_content(item.get("content"), budget))
    raise _RenderError("not a score input")


def _rendered(convs: list[list[Any]], key: str) -> tuple[str, None, int]:
    """Conversations rendered one after the other (``render_chat``), one media budget; a 400 names ``key``."""
    budget = media_budget()
    try:
        text = "".join([render_chat(c, None, None, budget) for c in convs])
    except _RenderError as e:
        raise BodyError(f"'{key}': {e}", key) from None
    return text, None, _estimate(text, budget)


def _estimate(text: str, budget: list[int]) -> int:
    """A rendered prompt's tokens: every media part ``MEDIA_PART_CHARS`` of it, a tag-only one too (as
    if rendered at full length: review s22-rev22a F1)."""
    return (len(text) + budget[1] * (MEDIA_PART_CHARS - MEDIA_TAG_CHARS)) // CHARS_PER_TOKEN


def parse_body(kind: str, raw: bytes | bytearray) -> ParsedBody:
    """Decode (orjson, once) and validate; ``kind`` is one of ``COMPLETIONS``, ``CHAT``, ``EMBEDDINGS``,
    ``RESPONSES``, ``MESSAGES``, ``POOLING``, ``SCORE``, ``BARE``, ``OTHER`` (``kind_for_path``). Raises
    ``BodyError``."""
    if not raw:
        raise BodyError("request body is empty; expected a JSON object")
    try:
        # (a UTF-8 byte order mark, which Windows tools write and vLLM's ``json.loads`` skips, RFC 8259 8.1:
        # read past, the body sent on as it is; qa32a Q6)
        body = orjson.loads(memoryview(raw)[3:] if raw.startswith(_BOM) else raw)
    except orjson.JSONDecodeError as bad:  # (its own name: compiled, an ``except`` variable has one type)
        raise BodyError(f"request body is not valid JSON: {bad}") from None
    if not isinstance(body, dict):
        raise BodyError("request body must be a JSON object")
    # Cheap guards first: nesting deeper than the limit needs at least that many brackets; the bytes' check
    # (``_nested_over``) decides (the bytes go upstream as sent; review s22-media M2: a repeated key, of
    # which orjson keeps the last, hid a deep first one from the walk, which then ran in full and accepted),
    # and each top-level value's bytes name the key, in C too.
    if more_than(raw, b"[{", MAX_NESTING) and _nested_over(raw, MAX_NESTING):
        key = _deep_key(body)
        where = f"'{key}' is" if key is not None else "the body is"
        raise BodyError(f"{where} nested more than {MAX_NESTING} levels deep", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BodyError("'model' is required and must be a non-empty string", "model")
    keys = _API_KEYS[kind]
    stream = False
    if keys.stream and (sent := body.get("stream")) is not None:
        read = lax_bool(sent)  # (``"true"``, ``1``: vLLM's lax pydantic ``bool`` takes them)
        if read is None:
            raise BodyError("'stream' must be a boolean", "stream")
        stream = read
    if kind in _RENDERS or kind == DERENDER:
        # (checked as its model's, but the answer is one JSON object: a render runs no model, a derender's
        # ``stream: true`` is one ``DerenderChatStreamResponse``; never a preemption candidate)
        stream = False
    # ``n`` and a batch are the completions and chat APIs' (another API may use the names otherwise).
    sequences = _choices(body, keys.null_n) if keys.choices and "n" in body else 1
    api = kind
    if kind == OTHER:
        # Unknown API: read the prompt the way its keys say, when it has one.
        kind = CHAT if "messages" in body else COMPLETIONS if "prompt" in body else OTHER
    elif (kind == RESPONSES and "input" not in body) or (kind == MESSAGES and "messages" not in body):
        # Without the key its prompt is in, no prompt (as an ``OTHER`` body: the server's 400 answers it).
        kind = OTHER
    token_ids: list[int] | None = None
    prompt_text, estimate, lead_chars = "", 0, 0
    if kind in (CHAT, MESSAGES):
        messages = body.get("messages")
        # (an empty list is vLLM's ``AnthropicMessagesRequest``'s to take, not chat's)
        if (
            not isinstance(messages, list)
            or not (messages or kind == MESSAGES)
            or not all(isinstance(m, dict) for m in messages)
        ):
            what = "a list" if kind == MESSAGES else "a non-empty list"
            raise BodyError(f"'messages' must be {what} of message objects", "messages")
        system = body.get("system") if kind == MESSAGES else None
        # (vLLM's ``AnthropicMessagesRequest``: a string or a list of content blocks, else its 400)
        if system is not None and not (
            isinstance(system, str) or (isinstance(system, list) and all(isinstance(b, dict) for b in system))
        ):
            raise BodyError("'system' must be a string or a list of content blocks", "system")
        budget = media_budget()
        try:
            prompt_text = render_chat(messages, body.get("tools"), system, budget)
        except _RenderError as e:
            key = "system" if _fails(system) else "messages"
            raise BodyError(f"'{key}': {e}", key) from None
        estimate = _estimate(prompt_text, budget)
    elif kind == RESPONSES:
        budget = media_budget()
        prompt_text, lead_chars = _responses_prompt(body, budget)
        estimate = _estimate(prompt_text, budget)
    elif kind == COMPLETIONS:
        prompts = _completions_prompt(body)
        if prompts is not None:
            prompt_text, token_ids, estimate, count = prompts
        else:
            count = 0
        if api == COMPLETIONS:
            sequences *= count + _embeds_count(body.get("prompt_embeds"))
    elif kind in (EMBEDDINGS, POOLING):
        prompt_text, token_ids, estimate = _pooling_prompt(body, kind == EMBEDDINGS)
    elif kind == SCORE:
        estimate, sequences = _score_estimate(body)
    elif kind == CHAT_BATCH and "messages" in body:
        convs = body["messages"]
        if not isinstance(convs, list) or not all(
            isinstance(c, list) and all(isinstance(m, dict) for m in c) for c in convs
        ):
            raise BodyError(
                "'messages' must be a list of conversations (lists of message objects)", "messages"
            )
        prompt_text, _, estimate = _rendered(convs, "messages")
        sequences *= max(len(convs), 1)
    elif kind == GENERATE:
        # (``token_ids`` as ids when they read; else no prompt: the server's 400 answers a bad one)
        ids = body.get("token_ids")
        try:
            token_ids = _token_ids(ids, "token_ids") or None if isinstance(ids, list) else None
        except BodyError:
            token_ids = None
        estimate = len(token_ids) if token_ids else 0
        params = body.get("sampling_params")
        if isinstance(params, dict) and "n" in params:
            # (``SamplingParams.n``: n sequences, at least 1; null is its 400 too)
            sequences = _at_least_one(params["n"], "sampling_params.n")
    max_tokens: int | None = None
    for key in keys.limits:
        sent = body.get(key)
        if sent is not None:
            # (``512.0``, ``"512"``, ``true``: vLLM's lax pydantic ``int`` takes them; sent on as they are)
            value = lax_int(sent)
            if value is None or value < keys.least:
                what = "a positive" if keys.least else "a non-negative"
                raise BodyError(f"'{key}' must be {what} integer", key)
            if max_tokens is None:
                max_tokens = value
    if kind == GENERATE:
        # (``SamplingParams.max_tokens``, read when a whole number; absent, the server's own limit
        # (``max_model_len`` - prompt: its ``is_sampling_param_provided``), not the model's 16: unknown)
        params = body.get("sampling_params")
        limit = params.get("max_tokens") if isinstance(params, dict) else None
        limit = lax_int(limit) if limit is not None else None
        max_tokens = limit if limit is not None and limit >= 0 else None
    elif max_tokens is None:
        max_tokens = keys.default
    if not keys.output:
        max_tokens = 0  # (decodes nothing: no output charged, and no decode length learned from it)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        if keys.user:
            raise BodyError("'user' must be a string", "user")
        user = None  # (not the API's key: the server ignores it, so does the session fallback)
    opts = body.get("stream_options") if keys.stream_options else None
    if opts is not None and not isinstance(opts, dict):
        raise BodyError("'stream_options' must be an object", "stream_options")
    # (``"include_usage": "false"`` is vLLM's False: lax pydantic, as above)
    wants_usage = opts is not None and lax_bool(opts.get("include_usage")) is True
    if sequences > MAX_SEQUENCES:
        sequences = MAX_SEQUENCES
    return ParsedBody(
        kind,
        body,
        model,
        stream,
        prompt_text,
        token_ids,
        max_tokens,
        user,
        wants_usage,
        estimate,
        sequences,
        len(raw),
        lead_chars,
    )


def inference_request(
    parsed: ParsedBody,
    *,
    request_id: str,
    model: str,
    policy: RequestPolicy,
    session: str | None = None,
    objective: str | None = None,
    fairness: str | None = None,
    subset: frozenset[str] | None = None,
    headers: Mapping[str, str] | None = None,
    arrival_time: float = 0.0,
) -> InferenceRequest:
    """The one ``InferenceRequest`` for a parsed body.

    ``model`` is the name the endpoint will see (after any rewrite); it is the LoRA adapter when the
    policy lists it as one; the body's own (the client's) is ``client_model`` when the two differ.
    ``session`` is the value of ``policy.session_header`` (the body's ``user`` when the header is absent);
    ``objective`` and ``fairness`` are the GIE control headers' values.
    """
    # Positional, in ``InferenceRequest``'s field order (test_inference_request_positional.py holds it): its
    # generated ``__init__`` costs ~1 us more for these 18 as keywords, once per request.
    return InferenceRequest(
        request_id,
        model,
        parsed.prompt_text,
        parsed.prompt_tokens,
        parsed.token_ids,
        parsed.max_tokens,
        parsed.sequences,
        parsed.stream,
        model if model in policy.adapters else None,  # lora_adapter
        session or parsed.user or None,  # session_key
        policy.objectives.get(objective, 0) if objective else 0,  # priority
        fairness or DEFAULT_FAIRNESS_ID,  # fairness_id
        subset,
        headers if headers is not None else {},
        arrival_time,
        False,  # subset_soft
        parsed.model if parsed.model != model else "",  # client_model
        parsed.body_bytes,
    )
