"""Reading ``usage`` from a response without parsing it whole: a JSON body's usage-only decode, and an
event stream's last usage event from a bounded tail. ``kvgate serve`` (``kvgate.gateway.stream``) and
``kvgate serve --clusters`` (the tail in ``kvgate.multicluster.router``, the body in ``.serve``) use them."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import orjson

from kvgate.openai.protocol import usage_from, usage_of
from kvgate.scheduling.types import Usage

TAIL_BYTES = 16 * 1024
# An event ends at a blank line after a CRLF, LF or lone CR line end (SSE; as ``kvgate.openai.sse``).
_EVENT_SEP = re.compile(rb"\r?\n\r?\n|\r\r")


class _UsageFields(msgspec.Struct):
    """The ``usage`` fields the gateway reads, each of any JSON type (``usage_from``'s checks apply)."""

    prompt_tokens: Any = None
    completion_tokens: Any = None
    prompt_tokens_details: Any = None


class _UsageOnly(msgspec.Struct):
    usage: _UsageFields | None = None


# Decodes a whole response body but builds only its ``usage``, and of that only the fields read: the
# choices' text and usage's other keys are skipped, not copied (a ``usage`` that is not an object fails
# the decode: None, as ``usage_from`` answers for it).
_USAGE_ONLY = msgspec.json.Decoder(_UsageOnly)


def usage_from_body(body: bytes) -> Usage | None:
    """``usage_from`` of a whole JSON response body (None when it has no usage object or is not JSON)."""
    if b'"usage"' not in body:
        return None
    start = body.find(b"{")
    if start < 0:
        return None
    try:
        usage = _USAGE_ONLY.decode(body[start:] if start else body).usage
    except msgspec.DecodeError:
        return None
    if usage is None:
        return None
    return usage_of(usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details)


def event_obj(event: bytes) -> Any:
    """The JSON object of one SSE event (or of a whole body); None when it has none."""
    start = event.find(b"{")
    if start < 0:
        return None
    try:
        return orjson.loads(event[start:])
    except orjson.JSONDecodeError:
        return None


def last_usage(tail: bytes | bytearray) -> Usage | None:
    """The usage of the last event in a stream's ``tail`` that carries one (None if none does). An
    event cut at the tail's start fails its decode and is skipped."""
    for ev in reversed(_EVENT_SEP.split(tail)):
        if b'"usage"' in ev and (usage := usage_from(event_obj(ev))) is not None:
            return usage
    return None


class UsageTail:
    """A relayed event stream's final usage event, from a bounded tail of it (the usage event is last,
    before ``[DONE]``): ``feed`` each chunk, ``usage()`` at its end, which reads the last ``TAIL_BYTES``.

    The tail is one buffer appended to in place and trimmed back to ``TAIL_BYTES`` only when it passes
    twice that (amortized: a small chunk costs its own bytes, not a copy of the whole tail), so it holds
    at most ``2 * TAIL_BYTES`` plus one chunk. ``kvgate serve``'s relay and ``kvgate serve --clusters``
    both keep theirs here."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        t = self._tail
        if len(chunk) >= TAIL_BYTES:  # a big chunk alone fills it
            t[:] = memoryview(chunk)[-TAIL_BYTES:]
        else:
            t += chunk
            if len(t) > 2 * TAIL_BYTES:
                del t[:-TAIL_BYTES]

    def usage(self) -> Usage | None:
        t = self._tail
        return last_usage(t[-TAIL_BYTES:] if len(t) > TAIL_BYTES else t)

    def body_usage(self) -> Usage | None:
        """A JSON body's usage from its tail (``usage_from_tail``): a body too large to hold whole."""
        t = self._tail
        return usage_from_tail(t[-TAIL_BYTES:] if len(t) > TAIL_BYTES else t)


_RAW = json.JSONDecoder()


def usage_from_tail(tail: bytes | bytearray) -> Usage | None:
    """The ``usage`` of a JSON response body read from its last bytes only (best effort, for a body too
    large to hold: vLLM, SGLang and the OpenAI API put ``usage`` last): the object after the tail's last
    ``"usage":`` key. None when the tail has none, or it does not decode. (A ``"usage"`` inside a JSON
    string has its quotes escaped: the last unescaped one is a key.)"""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    rest = bytes(tail[at + 7 :]).lstrip()
    if not rest.startswith(b":"):
        return None
    try:
        obj, _ = _RAW.raw_decode(rest[1:].lstrip().decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return usage_from({"usage": obj})
