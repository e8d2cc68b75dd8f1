"""Whether an answer framed by the close arrived whole (the rule ``kvgate serve`` and ``kvgate serve
--clusters`` share; fo31).

A body with no Content-Length and no chunked coding ends at the connection's clean close, and a server
that dies mid-body (its process killed: the kernel closes its socket with a FIN) sends the same close:
the framing cannot tell a complete body from a cut one. A JSON body can: a cut one does not parse. So a
door that holds a non-streamed answer whole before any byte of it goes out (``kvgate serve`` up to 4 MiB,
the hub likewise) checks such a body and takes one that does not parse for a lost body, tried elsewhere
as a connection lost mid-body is. Bodies with a length or chunks are whole by their framing (a short one
is an error already); other media types cannot be checked; a body too big to hold is relayed as it comes
and not checked.
"""

from __future__ import annotations

import orjson


def json_media(media_type: str) -> bool:
    """``application/json`` or a ``+json`` type (lower-case, without parameters)."""
    return media_type == "application/json" or media_type.endswith("+json")


def whole_json(media_type: str, body: bytes) -> bool:
    """False only for a JSON media type whose ``body`` does not parse (cut short); else True."""
    if not json_media(media_type):
        return True
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


__all__ = ["json_media", "whole_json"]
