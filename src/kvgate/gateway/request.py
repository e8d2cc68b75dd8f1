"""Parse an OpenAI request body once and describe it for the picker.

The body is decoded with orjson exactly once; the gateway re-encodes it only when it must change it
(model rewrite, or adding ``stream_options.include_usage``), otherwise the client's bytes go upstream
untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kvgate.gateway.errors import GatewayError

COMPLETIONS = "completions"
CHAT = "chat"
EMBEDDINGS = "embeddings"


@dataclass(slots=True)
class ParsedBody:
    kind: str
    body: dict[str, Any]
    model: str
    stream: bool
    # Text that prefix matching hashes (completions: prompt; chat: JSON of messages; embeddings: input).
    prompt_text: str
    token_ids: list[int] | None
    max_tokens: int | None
    user: str | None
    # The client asked for the final usage chunk itself (so it must not be stripped).
    client_wants_usage: bool


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param)


def _is_token_list(value: Any) -> bool:
    return all(type(t) is int for t in value)


def _prompt_text(value: Any, param: str) -> tuple[str, list[int] | None]:
    """Completions ``prompt`` / embeddings ``input``: a string, strings, token ids, or lists of ids."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return "\n".join(value), None
        if _is_token_list(value):
            return "", value
        if all(isinstance(v, list) and _is_token_list(v) for v in value):
            # A batch of token prompts: prefix matching uses the first; the estimate covers all.
            return "", value[0]
    raise _bad(f"'{param}' must be a string, a list of strings, or token ids", param)


def parse_body(kind: str, raw: bytes) -> ParsedBody:
    if not raw:
        raise _bad("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise _bad(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    token_ids: list[int] | None = None
    if kind == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _bad("'messages' must be a non-empty list of message objects", "messages")
        prompt_text = orjson.dumps(messages).decode()
    elif kind == COMPLETIONS:
        if "prompt" not in body:
            raise _bad("'prompt' is required", "prompt")
        prompt_text, token_ids = _prompt_text(body["prompt"], "prompt")
    else:
        if "input" not in body:
            raise _bad("'input' is required", "input")
        prompt_text, token_ids = _prompt_text(body["input"], "input")
        if stream:
            raise _bad("embeddings cannot be streamed", "stream")
    max_tokens: int | None = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None:
            if type(value) is not int or value < 0:
                raise _bad(f"'{key}' must be a non-negative integer", key)
            max_tokens = value
            break
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string", "user")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    wants_usage = bool(opts and opts.get("include_usage"))
    return ParsedBody(kind, body, model, stream, prompt_text, token_ids, max_tokens, user, wants_usage)


def estimate_tokens(parsed: ParsedBody) -> int:
    if parsed.token_ids is not None:
        return len(parsed.token_ids)
    return len(parsed.prompt_text) // 4
