"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}`` (``config.protocol``).

OpenAI SDKs read ``error.message`` into the exception they raise, so every refusal the gateway makes
(and every picker error, mapped by its ``.status``) goes out in this shape with a JSON content type; a
request's refusal on ``/v1/messages`` in Anthropic's (``error_response``'s ``path``).
"""

from __future__ import annotations

from kvgate.httpfront.server import Response, json_error
from kvgate.openai.protocol import CODES, MESSAGES_PATH, RETRY_AFTER_DEFAULT, api_error_body, sse_error_event
from kvgate.scheduling.types import DrainEvictedError, SchedulingError


class GatewayError(Exception):
    """A refusal by the gateway itself, before or instead of proxying."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or CODES.get(status, "error")
        self.retry_after = retry_after

    @classmethod
    def from_scheduling(cls, err: SchedulingError) -> GatewayError:
        return cls(err.status, err.message, code=err.code, retry_after=err.retry_after)


def error_response(err: GatewayError, request_id: str | None = None, path: str = "") -> Response:
    """``path``: the API refused; on ``/v1/messages`` the error is in Anthropic's shape
    (``{"type": "error", "error": {"type", "message"}}``), as vLLM's ``/v1/messages`` answers its own."""
    headers = {"x-request-id": request_id} if request_id else {}
    if err.status == 429 or err.status == 503:
        # Every 429 and 503 the gateway makes says when to come back (a caller with a better estimate
        # overwrites it): the flow control's "queue is full" and a shed request included, as the other
        # 429s (review s18-qa L1); a 503 says "nothing can take it now" (no endpoint eligible, all
        # attempts failed, a home not reachable): worth a retry soon (fo31; closing-s30).
        headers["Retry-After"] = RETRY_AFTER_DEFAULT
    if err.retry_after is not None:  # (the error's own: a 503 at the drain deadline, ``DrainEvictedError``)
        headers["Retry-After"] = err.retry_after
    if path == MESSAGES_PATH:
        body = api_error_body(path, err.status, err.message)
        return Response(
            status=err.status, body=body, content_type="application/json", headers=headers or None
        )
    return json_error(err.status, err.message, param=err.param, code=err.code, headers=headers or None)


def shutting_down(request_id: str | None = None, path: str = "") -> Response:
    """The 503 of a request that arrives while the gateway drains (``Connection: close``), with the
    ``Retry-After`` of the drain deadline's 503 to a queued request (``DrainEvictedError``): it never ran
    anywhere, safe to retry at another replica. ``path``: as ``error_response``'s."""
    err = GatewayError(503, "gateway is shutting down", retry_after=DrainEvictedError.retry_after)
    resp = error_response(err, request_id, path)
    resp.force_close()
    return resp


def unauthorized(request_id: str | None = None, path: str = "") -> Response:
    """The 401 of a request without a valid API key (``auth``), from its head or from the proxy.
    ``path``: as ``error_response``'s."""
    err = GatewayError(401, "missing or invalid API key", code="invalid_api_key")
    resp = error_response(err, request_id, path)
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


__all__ = ["GatewayError", "error_response", "shutting_down", "sse_error_event", "unauthorized"]
