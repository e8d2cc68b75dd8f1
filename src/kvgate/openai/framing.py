"""Whether an answer framed by the close arrived whole (the rule ``kvgate serve`` and ``kvgate serve
--clusters`` share; fo31).

A body with no Content-Length and no chunked coding ends at the connection's clean close, and a server
that dies mid-body (its process killed: the kernel closes its socket with a FIN) sends the same close:
the framing cannot tell a complete body from a cut one. A JSON body can: a cut one ends before its
document does. So a door that holds a non-streamed answer whole before any byte of it goes out
(``kvgate serve`` up to 4 MiB, the hub likewise) checks such a body and takes a cut one for a lost body,
tried elsewhere as a connection lost mid-body is. Bodies with a length or chunks are whole by their
framing (a short one is an error already); other media types cannot be checked, nor a body with a
``Content-Encoding`` (its bytes are not the JSON's; review s31-rev-a31 F1); a body too big to hold is
relayed as it comes and not checked.

"Cut" is what a cut can look like: the parse runs out of input (or stops inside a UTF-8 sequence). A
body that does not parse for another reason was sent so and is relayed as it came: JSON Python's ``json``
writes and reads but orjson refuses (``NaN``/``Infinity``, a byte order mark, ``1e400``, a lone surrogate
escape: ``json.loads`` takes it) or no JSON at all (review s31-rev-a31 F3). A cut after such a
non-standard part is not seen (its parse stops there, not at the end): relayed as it came.
"""

from __future__ import annotations

import codecs
import json

import orjson


def json_media(media_type: str) -> bool:
    """``application/json`` or a ``+json`` type (lower-case, without parameters)."""
    return media_type == "application/json" or media_type.endswith("+json")


def whole_json(media_type: str, body: bytes, content_encoding: str) -> bool:
    """False only for a body with a JSON media type and no content coding (``content_encoding`` empty or
    ``identity``) that was cut short (``cut_json``); else True."""
    if not json_media(media_type):
        return True
    if content_encoding and content_encoding.strip().lower() != "identity":
        return True
    try:
        orjson.loads(body)  # (the usual case: standard JSON, whole)
    except orjson.JSONDecodeError:
        return not cut_json(body)
    return True


def cut_json(body: bytes) -> bool:
    """Whether ``body``, which orjson does not parse, is a JSON text cut short: its UTF-8 stops inside a
    character, or its parse runs out of input (orjson's error at the text's end; orjson's position counts
    characters); not when Python's ``json`` reads it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(body, final=False)
    except UnicodeDecodeError:
        return False  # (bad bytes before the end: sent so)
    if decoder.getstate()[0]:
        return True  # (the last character's bytes incomplete)
    text = text.removeprefix("\ufeff")
    try:
        json.loads(text)
    except json.JSONDecodeError:
        pass
    else:
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return e.pos >= len(text.rstrip())
    return False  # (orjson reads it without its byte order mark)


__all__ = ["cut_json", "json_media", "whole_json"]
