"""The access log: one line per finished request on the ``kvgate.access`` logger, at INFO (qa24 F4).

``kvgate serve`` wraps its data routes with ``logged`` only while the log is on (``accessLog: true``,
the default, and the logger enabled for INFO when the proxy is built; off with ``accessLog: false``,
``--no-access-log`` or ``--log-level warning``), so a gateway without it pays nothing. A request's line
is formatted once, by the logging call, from a few values (no dict); it never carries a header value
other than the request id, nor a body: no prompt, no API key. The proxy fills the request's ``Note`` as
it goes (the model, each attempt's endpoint)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kvgate.requestid import acceptable

if TYPE_CHECKING:
    from kvgate.httpfront.server import Request, Response, StreamResponse

ACCESS = logging.getLogger("kvgate.access")
# (the status of a request whose client left before its answer: nginx's convention)
CLIENT_GONE = 499
_FORMAT = "%s %s %s %d model=%s endpoint=%s attempts=%d ms=%.1f bytes=%d"


class Note:
    """What ``Proxy._dispatch`` learns of one request for its line (``-``/0: not reached)."""

    __slots__ = ("attempts", "endpoint", "model", "sent")

    def __init__(self) -> None:
        self.model = "-"
        self.endpoint = "-"
        self.attempts = 0
        self.sent = -1  # a relayed body's bytes (a stream), set at its end; -1: a whole answer's length


async def logged(
    handler: Callable[[str, Request], Awaitable[Response | StreamResponse]],
    notes: dict[int, Note],
    clock: Callable[[], float],
    kind: str,
    request: Request,
) -> Response | StreamResponse:
    """``handler(kind, request)``, then its access line (the request's note kept in ``notes`` meanwhile)."""
    key = id(request)
    notes[key] = note = Note()
    t0 = clock()
    status = CLIENT_GONE
    resp: Response | StreamResponse | None = None
    try:
        resp = await handler(kind, request)
        status = resp.status
        return resp
    except asyncio.CancelledError:
        raise
    except Exception:
        status = 500  # (the front answers an unexpected error 500)
        raise
    finally:
        del notes[key]
        if ACCESS.isEnabledFor(logging.INFO):
            rid = resp.headers.get("x-request-id") if resp is not None else None
            if rid is None:  # (no answer: the client's id, if the gateway would adopt it)
                rid = request.headers.get("x-request-id") or "-"
                rid = rid if acceptable(rid) else "-"
            body = getattr(resp, "body", None)
            size = len(body) if isinstance(body, bytes) else max(note.sent, 0)
            ms = (clock() - t0) * 1000.0
            path = request.path
            ACCESS.info(_FORMAT, rid, request.method, path, status, note.model, note.endpoint,
                        note.attempts, ms, size)  # fmt: skip
