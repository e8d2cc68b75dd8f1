"""Which client ``x-request-id`` the gateway adopts (both doors; qa24 F6).

A client's id is echoed in the answer's head and forwarded to the model server: an unbounded one (up to
the front's header limit) made the server refuse the request with its own text/plain 400 (aiohttp's 8,190
bytes per line) and the echoed head unreadable by a client with default limits. An id longer than
``MAX_LEN`` or with a character outside printable ASCII is replaced by a generated one, as Envoy replaces
an edge client's id by default (``preserve_external_request_id: false``); the replacement is logged with
the client's id cut short.
"""

from __future__ import annotations

HEADER = "x-request-id"  # (``openai.protocol.REQUEST_ID``, here for the layers below ``openai``)
MAX_LEN = 256  # characters (a UUID is 36; OpenTelemetry / W3C trace ids fit many times over)
_SHOWN = 64  # characters of a replaced id in the log line


def acceptable(rid: str) -> bool:
    """Non-empty, at most ``MAX_LEN`` characters, printable ASCII (spaces included)."""
    return 0 < len(rid) <= MAX_LEN and rid.isascii() and rid.isprintable()


def shown(rid: str) -> str:
    """A replaced id for the log: its start, quoted, and its length."""
    return f"{rid[:_SHOWN]!r}{'...' if len(rid) > _SHOWN else ''} ({len(rid)} characters)"
