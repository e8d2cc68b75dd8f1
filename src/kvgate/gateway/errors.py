"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``.

OpenAI SDKs read ``error.message`` into the exception they raise, so every refusal the gateway makes
(and every picker error, mapped by its ``.status``) goes out in this shape with a JSON content type.
"""

from __future__ import annotations

import orjson

from kvgate.gateway.front import Response
from kvgate.scheduling.types import SchedulingError

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
_CODES = {
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


class GatewayError(Exception):
    """A refusal by the gateway itself, before or instead of proxying."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or _CODES.get(status, "error")

    @classmethod
    def from_scheduling(cls, err: SchedulingError) -> GatewayError:
        return cls(err.status, err.message, code=err.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                "param": param,
                "code": code or _CODES.get(status, "error"),
            }
        }
    )


def error_response(err: GatewayError, request_id: str | None = None) -> Response:
    headers = {"x-request-id": request_id} if request_id else None
    return Response(
        status=err.status,
        body=error_body(err.status, err.message, err.param, err.code),
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(message: str, code: str = "upstream_error") -> bytes:
    """The event that ends a stream the upstream cut: the openai SDK raises ``APIError`` on it."""
    return b"data: " + error_body(502, message, None, code) + b"\n\n"
