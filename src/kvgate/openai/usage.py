"""Reading ``usage`` from a response without parsing it whole: a JSON body's usage-only decode, and an
event stream's last usage event from a bounded tail. ``kvgate serve`` (``kvgate.gateway.stream``) and
``kvgate serve --clusters`` (the tail in ``kvgate.multicluster.router``, the body in ``.serve``) use them."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import orjson

from kvgate.openai.protocol import input_usage, later_usage, usage_from, usage_of
from kvgate.openai.sse import event_ends
from kvgate.scheduling.types import Usage

TAIL_BYTES = 16 * 1024
# The start of a stream kept beside its tail: an Anthropic stream's ``message_start`` (its input count)
# is its first event, a few hundred bytes.
HEAD_BYTES = 4 * 1024


class _UsageFields(msgspec.Struct):
    """The ``usage`` fields the gateway reads, each of any JSON type (``usage_from``'s checks apply)."""

    prompt_tokens: Any = None
    completion_tokens: Any = None
    prompt_tokens_details: Any = None
    # Anthropic Messages / OpenAI Responses (``/v1/messages``, ``/v1/responses``)
    input_tokens: Any = None
    output_tokens: Any = None
    input_tokens_details: Any = None
    cache_read_input_tokens: Any = None  # Anthropic: not in ``input_tokens`` (``input_usage``)
    cache_creation_input_tokens: Any = None


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
    if usage.prompt_tokens is None and usage.completion_tokens is None:
        return input_usage(
            usage.input_tokens,
            usage.output_tokens,
            usage.input_tokens_details,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
        )
    return usage_of(usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details)


def event_obj(event: bytes | bytearray) -> Any:
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
    event cut at the tail's start fails its decode; its ``usage`` key, if whole, is still read. A last
    usage without prompt tokens (an Anthropic stream's ``message_delta``) takes them from an earlier
    one in the tail (its ``message_start``; ``later_usage``). Events end where the relays' do
    (``kvgate.openai.sse.event_ends``: a blank line after a CRLF, LF or lone CR line end), found in
    one pass; only the events holding ``"usage"`` are copied out."""
    last: Usage | None = None
    bounds = [0, *event_ends(tail), len(tail)]
    for k in range(len(bounds) - 1, 0, -1):
        start, stop = bounds[k - 1], bounds[k]
        if tail.find(b'"usage"', start, stop) >= 0:
            ev = tail[start:stop]
            obj = event_obj(ev)
            if obj is None:
                # An event cut at the tail's start (a Responses stream's ``response.completed`` holds
                # the whole answer before its ``usage``): its usage key is read as it stands.
                scan = BodyUsageScanner()
                scan.feed(bytes(ev), final=True)
                usage = scan.usage()
            else:
                usage = usage_from(obj)
            if usage is None:
                continue
            if last is None:
                last = usage
            else:
                return later_usage(usage, last)
            if last.prompt_tokens:
                return last
    return last


class UsageTail:
    """A relayed event stream's final usage event, from a bounded tail of it (the usage event is last,
    before ``[DONE]``): ``feed`` each chunk, ``usage()`` at its end, which reads the last ``TAIL_BYTES``.

    The tail is one buffer appended to in place and trimmed back to ``TAIL_BYTES`` only when it passes
    twice that (amortized: a small chunk costs its own bytes, not a copy of the whole tail), so it holds
    at most ``2 * TAIL_BYTES`` plus one chunk. ``kvgate serve``'s relay and ``kvgate serve --clusters``
    both keep theirs here.

    The stream's first ``HEAD_BYTES`` are kept too: a long Anthropic stream's last ``message_delta``
    may carry only ``output_tokens``, its input count being in ``message_start``, the first event, which
    has left the tail by then; the tail's last usage without input tokens takes them from there."""

    __slots__ = ("_head", "_tail")

    def __init__(self) -> None:
        self._tail = bytearray()
        self._head = bytearray()

    def feed(self, chunk: bytes) -> None:
        head = self._head
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        t = self._tail
        if len(chunk) >= TAIL_BYTES:  # a big chunk alone fills it
            t[:] = memoryview(chunk)[-TAIL_BYTES:]
        else:
            t += chunk
            if len(t) > 2 * TAIL_BYTES:
                del t[:-TAIL_BYTES]

    def usage(self) -> Usage | None:
        t = self._tail
        usage = last_usage(t[-TAIL_BYTES:] if len(t) > TAIL_BYTES else t)
        if usage is not None and not usage.prompt_tokens:
            # (its whole events only: one cut at the head's end is not read)
            head = self._head
            ends = event_ends(head)
            first = last_usage(head[: ends[-1]]) if ends else None
            if first is not None:
                usage = later_usage(first, usage)
        return usage


_RAW = json.JSONDecoder()


_KEY = b'"usage"'
# The key and its ``:`` (a string value ``"usage"``, e.g. a token's text, is followed by , } or ]:
# never a candidate, so such tokens cost nothing but the search).
_KEY_COLON = re.compile(rb'"usage"[ \t\r\n]*:')
# A ``usage`` value larger than this is not read (a real one is a few hundred bytes).
USAGE_VALUE_MAX = 64 * 1024
# How far past a candidate key the scanner looks for its ``:`` (the bytes kept back for the next chunk).
_LOOK = 64


class BodyUsageScanner:
    """The ``usage`` of a JSON response body too large to hold, read as it passes: ``feed`` each chunk,
    ``usage()`` at its end. Wherever ``usage`` stands (vLLM's chat answer puts ``prompt_logprobs`` and
    ``prompt_token_ids``, MiBs of them, after it; review s17-bigbody M1; before, only the body's last
    16 KiB were searched). The first ``"usage"`` key whose value is a usage object counts: a key, since
    its opening quote is not escaped and a ``:`` follows (inside a JSON string every quote is escaped;
    a string value is followed by ``,``, ``}`` or ``]``), so a token's text ``"usage"`` or a content
    ``\\"usage\\":`` is not taken. (Not depth-checked: a nested ``usage`` object before the top-level
    one would be taken; no OpenAI, vLLM or SGLang answer has one.) Bounded: one regex search
    (``"usage"`` then ``:``) over each chunk, ``_LOOK`` bytes carried between chunks (a key split across
    them), at most ``USAGE_VALUE_MAX`` bytes of a value; after the usage, nothing."""

    __slots__ = ("_carry", "_done", "_start", "_usage", "_value")

    def __init__(self) -> None:
        self._carry = b""  # the previous chunk's last bytes
        self._start = 0  # where in ``carry + chunk`` the keys not looked at yet may start
        self._value: bytearray | None = None  # after a key: its value's bytes so far
        self._done = False
        self._usage: Usage | None = None

    def feed(self, chunk: bytes, final: bool = False) -> None:
        # A loop, not recursion: after a ``usage`` key that is not the usage the rest is looked at
        # again here (review s17-fixes-b L8: ~500 such keys in one read overflowed the stack).
        rest: bytes | None = chunk
        while rest is not None:
            rest = self._feed(rest, final)
            final = False

    def _feed(self, chunk: bytes, final: bool) -> bytes | None:
        """One step of ``feed``: what is left to look at (after a non-usage ``usage`` value), or None."""
        if self._done or not (chunk or final):
            return None
        if self._value is not None:
            return self._take(chunk)
        buf = self._carry + chunk if self._carry else chunk
        # Keys starting before ``limit`` have their ``:`` in ``buf`` (at the end: all of them).
        limit = len(buf) if final else len(buf) - _LOOK
        pos = self._start
        while pos < limit:
            m = _KEY_COLON.search(buf, pos)
            if m is None or (at := m.start()) >= limit:
                break
            pos = at + 1
            i = at
            while i > 0 and buf[i - 1] == 0x5C:  # an escaped quote: inside a string
                i -= 1
            if (at - i) % 2:
                continue
            self._value = bytearray()
            return self._take(buf[at + len(_KEY) :])
        self._carry = buf[-2 * _LOOK :]
        self._start = max(0, len(self._carry) - min(_LOOK, len(buf)))
        return None

    def _take(self, data: bytes) -> bytes | None:
        """``data`` added to the value after a key; the bytes after that value when it is whole and not a
        usage object (to look on in), else None."""
        v = self._value
        assert v is not None
        v += data
        raw = bytes(v)
        after = raw.lstrip()[1:].lstrip()  # (after the ``:``)
        text = after[:USAGE_VALUE_MAX]
        try:
            obj, end = _RAW.raw_decode(text.decode("utf-8", "replace"))
        except ValueError:
            if len(after) >= USAGE_VALUE_MAX:
                self._done, self._value = True, None  # too big, or not JSON: no usage
            return None
        self._value = None
        self._usage = usage_from({"usage": obj})
        if self._usage is None:  # a ``usage`` key that is not the usage: look on after its value
            self._carry, self._start = b"", 0
            return raw[len(raw) - len(after) + _end_bytes(text, end) :]
        self._done = True
        return None

    def usage(self) -> Usage | None:
        """The usage, once the whole body was fed (the last bytes are looked at here)."""
        if not self._done and self._value is None:
            self.feed(b"", final=True)
        return self._usage


def _end_bytes(text: bytes, end: int) -> int:
    """Bytes of ``text`` in its first ``end`` decoded characters."""
    return len(text.decode("utf-8", "replace")[:end].encode())
