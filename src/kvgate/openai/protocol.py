"""What both front doors (``kvgate serve`` and ``kvgate epp``) share on the wire.

Control header names (GIE endpoint picker protocol), the OpenAI ``usage`` object as the scheduler's
``Usage``, and the OpenAI error body: one definition, so the two doors cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import orjson

from kvgate.scheduling.types import Usage

# Request headers a gateway (or a client) may send; read by the front door, never forwarded upstream.
FAIRNESS_ID = "x-gateway-inference-fairness-id"
OBJECTIVE = "x-gateway-inference-objective"
MODEL_REWRITE = "x-gateway-model-name-rewrite"
DESTINATION_ENDPOINT = "x-gateway-destination-endpoint"
REQUEST_ID = "x-request-id"
DEFAULT_FAIRNESS_ID = "default-flow"
# llm-d's fairness header, read when GIE's names no flow (``kvgate.flowcontrol.controller.flow_of``, whose
# package ``multicluster`` may not import, keeps its own name for it).
LLMD_FAIRNESS_ID = "x-llm-d-inference-fairness-id"
# llm-d's objective header (llm-d-router ``metadata.ObjectiveKey``; GIE's ``OBJECTIVE`` is its deprecated
# alias there): read in both doors, preferred over GIE's when both name one (``objective_of``; qa36b-F4).
LLMD_OBJECTIVE = "x-llm-d-inference-objective"
# llm-d's model-name-rewrite header (``metadata.ModelNameRewriteKey``; GIE's ``MODEL_REWRITE`` its
# deprecated alias): never forwarded; where a door applies a rewrite header, preferred (rev-c36 F4).
LLMD_MODEL_REWRITE = "x-llm-d-model-name-rewrite"


def objective_of(gie: str | None, llmd: str | None) -> str | None:
    """The request's objective name from GIE's header and llm-d's: llm-d's where it names one, as
    llm-d-router prefers its control headers over their old aliases (an empty value is absent)."""
    return llmd or gie


# The session-affinity header when the configuration names none (``sessionHeader`` / ``--session-header``).
DEFAULT_SESSION_HEADER = "x-session-id"
# Conformance hooks (GIE conformance suite): a client must not steer routing with them unless enabled.
TEST_ENDPOINT_SELECTION = "test-epp-endpoint-selection"
CONFORMANCE_SERVED = "x-conformance-test-served-endpoint"


def usage_from(obj: Any) -> Usage | None:
    """``obj["usage"]`` of a response or stream event (None when absent or not an object). OpenAI's
    ``prompt_tokens`` / ``completion_tokens``, or the ``input_tokens`` / ``output_tokens`` of Anthropic
    Messages and OpenAI Responses (``/v1/messages``, ``/v1/responses``; review s17-qafix-d F2); a
    Responses stream's ``response.completed`` and an Anthropic stream's ``message_start`` carry it in
    their ``response`` / ``message`` object (Anthropic's input counts its cache reads and writes:
    ``input_usage``)."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        inner = obj.get("response") or obj.get("message")
        usage = inner.get("usage") if isinstance(inner, dict) else None
        if not isinstance(usage, dict):
            return None
    # (A null count is an absent one, as the whole-body reader ``usage_from_body`` decodes it: the two
    # agree on every top-level usage object; only this one also reads a nested ``response`` / ``message``
    # usage, a stream event's shape.)
    if usage.get("prompt_tokens") is not None or usage.get("completion_tokens") is not None:
        return usage_of(
            usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("prompt_tokens_details")
        )
    return input_usage(
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        usage.get("input_tokens_details"),
        usage.get("cache_read_input_tokens"),
        usage.get("cache_creation_input_tokens"),
        usage.get("output_tokens_details"),
    )


def input_usage(
    input_tokens: Any,
    output_tokens: Any,
    details: Any,
    cache_read: Any,
    cache_creation: Any,
    out_details: Any = None,
) -> Usage:
    """A ``Usage`` from an ``input_tokens`` / ``output_tokens`` usage. OpenAI Responses: ``input_tokens``
    is the whole input (cached ones in ``input_tokens_details.cached_tokens``). Anthropic Messages: the
    whole input is ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` (vLLM's
    ``/v1/messages`` subtracts the cached tokens from ``input_tokens`` likewise), the cached ones
    ``cache_read_input_tokens`` (review s17-fixes-b M2: a prefix-cached request was charged only its
    uncached part). Responses' ``output_tokens_details.reasoning_tokens`` (``out_details``) is kept."""
    if cache_read is None and cache_creation is None:
        usage = usage_of(input_tokens, output_tokens, details)
        if isinstance(out_details, dict):
            n = out_details.get("reasoning_tokens")
            if type(n) is int and n >= 0:
                usage.reasoning_tokens = min(n, usage.completion_tokens)
        return usage
    read = cache_read if type(cache_read) is int and cache_read >= 0 else 0
    made = cache_creation if type(cache_creation) is int and cache_creation >= 0 else 0
    uncached = input_tokens if type(input_tokens) is int and input_tokens >= 0 else 0
    usage = usage_of(uncached + read + made, output_tokens, None)
    if type(cache_read) is int and cache_read >= 0:
        usage.cached_tokens, usage.cached_reported = read, True
    return usage


def later_usage(before: Usage | None, usage: Usage) -> Usage:
    """A stream's usage after a later usage event: an Anthropic stream's ``message_delta`` may carry
    only ``output_tokens`` (its ``message_start`` had ``input_tokens``): a later count of 0 prompt tokens
    keeps the earlier one's."""
    if before is not None and not usage.prompt_tokens and before.prompt_tokens:
        usage.prompt_tokens = before.prompt_tokens
        if not usage.cached_reported:
            usage.cached_tokens, usage.cached_reported = before.cached_tokens, before.cached_reported
    return usage


def usage_of(prompt_tokens: Any, completion_tokens: Any, details: Any) -> Usage:
    """A ``Usage`` from a usage object's fields as sent (a count that is not a non-negative integer reads
    as 0; ``cached_tokens`` from ``prompt_tokens_details`` when that is an object)."""
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    # (the counts' check inlined: once per response; ``cached is not None`` only tells mypy the type)
    known = type(cached) is int and cached >= 0
    return Usage(
        prompt_tokens if type(prompt_tokens) is int and prompt_tokens >= 0 else 0,
        completion_tokens if type(completion_tokens) is int and completion_tokens >= 0 else 0,
        cached if known and cached is not None else 0,
        known,
    )


# ``Retry-After`` (seconds) of a 429 whose cause gives no better estimate (a full flow-control queue, a
# shed request): capacity frees as requests end, so come back soon. Every door's 429 carries one.
RETRY_AFTER_DEFAULT = "1"

# Set on a 429 that refuses the request by policy (a tenant's rate limit), not for want of capacity: the
# header Envoy's rate-limit filters set, so a proxy in front neither retries it nor takes it for the
# backend's health (``kvgate serve --clusters`` passes such a 429 to the client and keeps the cluster).
RATE_LIMITED = "x-envoy-ratelimited"

_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}
CODES = {
    400: "invalid_request_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    429: "rate_limit_exceeded",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "timeout",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}``: OpenAI SDKs raise with ``error.message``."""
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                "param": param,
                "code": code or CODES.get(status, "error"),
            }
        }
    )


# Anthropic Messages (``/v1/messages``): its errors are ``{"type": "error", "error": {"type", "message"}}``
# (vLLM's ``AnthropicErrorResponse``), their ``type`` Anthropic's name for the status.
MESSAGES_PATH = "/v1/messages"
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> bytes:
    """An error in Anthropic's shape, as vLLM's ``/v1/messages`` answers one (its ``api_router``)."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def api_error_body(
    path: str, status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    """A refusal's body in its API's shape (``path``): on ``/v1/messages`` Anthropic's, else OpenAI's."""
    if path == MESSAGES_PATH:
        return anthropic_error_body(status, message)
    return error_body(status, message, param, code)


def sse_error_event(message: str, code: str = "upstream_error", status: int = 502, path: str = "") -> bytes:
    """The event that ends a stream cut before its end (the upstream cut it: 502; the gateway's drain
    deadline: 503), ``data: {"error": {...}}`` as vLLM sends one mid-stream (its ``code`` is the status
    number; vLLM then sends ``data: [DONE]``, not sent here: the stream did not complete). The openai SDK
    raises ``APIError`` with ``error.message`` on it. On ``/v1/messages`` (``path``): ``event: error`` +
    Anthropic's body, as vLLM's ``/v1/messages`` ends a failed stream; the Anthropic SDK skips an event
    with no ``event:`` line (a cut answer then read as a clean, short one: review s23-qa F3) and raises on
    this one."""
    if path == MESSAGES_PATH:
        return b"event: error\ndata: " + anthropic_error_body(status, message) + b"\n\n"
    return b"data: " + error_body(status, message, None, code) + b"\n\n"


# A stream still relayed at a graceful drain's deadline (``kvgate serve``, ``kvgate serve --clusters``): its
# upstream aborted, it ends with this event and the body's clean end; the cut streams get ``CUT_WRITE_S``
# to write it before the connections close.
CUT_WRITE_S = 1.0


def drain_cut_event(drain_s: float, path: str = "") -> bytes:
    """The error event of a stream the drain's deadline cut (503, ``service_unavailable``; ``path``: as
    ``sse_error_event``'s)."""
    message = f"the gateway is shutting down: its drain deadline ({drain_s:g}s) cut the stream before its end"
    return sse_error_event(message, code="service_unavailable", status=503, path=path)
