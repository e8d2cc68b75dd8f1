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
from kvgate.openai.sse import event_ends, joined_data
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
    output_tokens_details: Any = None  # Responses: its ``reasoning_tokens``


class _UsageOnly(msgspec.Struct):
    usage: _UsageFields | None = None


# Decodes a whole response body but builds only its ``usage``, and of that only the fields read: the
# choices' text and usage's other keys are skipped, not copied (a ``usage`` that is not an object fails
# the decode: None, as ``usage_from`` answers for it).
_USAGE_ONLY = msgspec.json.Decoder(_UsageOnly)


def usage_from_body(body: bytes) -> Usage | None:
    """``usage_from`` of a whole JSON response body (None when it has no usage object or is not JSON)."""
    if b'"usage"' not in body and (b"\\u00" not in body or _ANY_KEY.search(body) is None):
        return None  # (a key spelled with ``\u`` escapes, ``"\u0075sage"``, is the key too)
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
            usage.output_tokens_details,
        )
    return usage_of(usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details)


def event_obj(event: bytes | bytearray) -> Any:
    """The JSON object of one SSE event (or of a whole body); None when it has none. An event whose data
    spans several ``data:`` lines, or whose one ``data:`` line has other fields beside it (``id:``,
    ``retry:``, a ``: comment`` holding a ``{``), is read as the SSE spec reads its data
    (``kvgate.openai.sse.joined_data``), on the decode's failure only: one-line events, every known
    server's, cost nothing more (qa32a Q7; rev-e32 F4; ``SSEScanner`` holds and reads such events alike,
    late-a32)."""
    start = event.find(b"{")
    if start < 0:
        return None
    try:
        return orjson.loads(event[start:])
    except orjson.JSONDecodeError:
        pass
    data = joined_data(event)
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def last_usage(tail: bytes | bytearray) -> Usage | None:
    """The usage of the last event in a stream's ``tail`` that carries one (None if none does). An
    event cut at the tail's start fails its decode; its own ``usage`` key, if whole, is still read
    (``_usage_after_a_key``: at the depth ``usage_from`` reads, not one nested deeper). A last
    usage without prompt tokens (an Anthropic stream's ``message_delta``) takes them from an earlier
    one in the tail (its ``message_start``; ``later_usage``). Events end where the relays' do
    (``kvgate.openai.sse.event_ends``: a blank line after a CRLF, LF or lone CR line end), found in
    one pass; only the events holding ``"usage"`` are copied out."""
    last: Usage | None = None
    bounds = [0, *event_ends(tail), len(tail)]
    for k in range(len(bounds) - 1, 0, -1):
        start, stop = bounds[k - 1], bounds[k]
        if tail.find(b'"usage"', start, stop) >= 0 or (
            tail.find(b"\\u00", start, stop) >= 0 and _ANY_KEY.search(tail, start, stop)  # ``"\u0075sage"``
        ):
            ev = tail[start:stop]
            obj = event_obj(ev)
            if obj is None:
                # An event cut at the tail's start (a Responses stream's ``response.completed`` holds
                # the whole answer before its ``usage``): read from its first ``usage`` key on, at the
                # depth that key's event object gives it (``_usage_after_a_key``).
                usage = _usage_after_a_key(bytes(ev))
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

    The stream's first ``HEAD_BYTES`` are kept too (copied once, when the tail first drops them): a
    long Anthropic stream's last ``message_delta`` may carry only ``output_tokens``, its input count
    being in ``message_start``, the first event, which has left the tail by then; the tail's last usage
    without input tokens takes them from there."""

    __slots__ = ("_head", "_tail")

    def __init__(self) -> None:
        self._tail = bytearray()
        # The stream's first bytes, copied when the tail first drops them (None: it has not yet; then
        # they are the tail's own first bytes): nothing per chunk.
        self._head: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        t = self._tail
        if len(chunk) >= TAIL_BYTES:  # a big chunk alone fills it
            if self._head is None:
                self._head = bytes(t[:HEAD_BYTES]) + chunk[: max(0, HEAD_BYTES - len(t))]
            t[:] = memoryview(chunk)[-TAIL_BYTES:]
        else:
            t += chunk
            if len(t) > 2 * TAIL_BYTES:
                if self._head is None:
                    self._head = bytes(t[:HEAD_BYTES])
                del t[:-TAIL_BYTES]

    def usage(self) -> Usage | None:
        t = self._tail
        usage = last_usage(t[-TAIL_BYTES:] if len(t) > TAIL_BYTES else t)
        if usage is not None and not usage.prompt_tokens and (self._head is not None or len(t) > TAIL_BYTES):
            # (its whole events only: one cut at the head's end is not read)
            head = self._head if self._head is not None else bytes(t[:HEAD_BYTES])
            ends = event_ends(head)
            first = last_usage(head[: ends[-1]]) if ends else None
            if first is not None:
                usage = later_usage(first, usage)
        return usage


_RAW = json.JSONDecoder()
# A ``usage`` value larger than this is not read (a real one is a few hundred bytes).
USAGE_VALUE_MAX = 64 * 1024
_KEY = b'"usage"'
# The key as JSON may spell it: each letter as itself or as its ``\u`` escape (JSON's escapes of an
# ASCII letter: ``\u00XX``, hex digits of either case; those of these five are digits only). Longest:
# ``_KEY_MAX`` bytes. Real servers write ``"usage"``: the escaped forms are looked for only where the
# escape of one of its letters stands (``_LETTER_ESCAPE``) before the next plain key.
_KEY_FORMS = tuple((bytes([c]), b"\\u%04x" % c) for c in b"usage")
_ANY_KEY_RE = b'"' + b"".join(b"(?:%s|%s)" % (lit, re.escape(esc)) for lit, esc in _KEY_FORMS) + b'"'
_ANY_KEY = re.compile(_ANY_KEY_RE)
_KEY_MAX = 2 + 6 * len(_KEY_FORMS)
# A key candidate: the key, whitespace, then ``:`` or the bytes' end (the ``:`` may come next).
_CANDIDATE = re.compile(rb'"usage"[ \t\r\n]*+(?::|\Z)')
_CANDIDATE_ANY = re.compile(b"(" + _ANY_KEY_RE + rb")[ \t\r\n]*+(?::|\Z)")
# The escape of one of the key's letters (``u s a g e``: ``\u0075 \u0073 \u0061 \u0067 \u0065``), which any
# spelled key holds; not any ``\u00`` (review s19-gw L4): encoders write control characters (``\u001b``)
# and, with ``ensure_ascii``, Latin-1 letters (``\u00e9``) so.
_LETTER_ESCAPE = re.compile(rb"\\u00(?:7[53]|6[157])")
# The rest of a string, read from inside it: its bytes and escapes, then (1) its closing quote, or (2)
# a backslash that ends the bytes here (the byte it escapes comes next), or neither (more to come).
_STR_REST = re.compile(rb'(?:[^"\\]++|\\.)*+(?:(")|(\\))?', re.DOTALL)
# The key and its ``:`` in an event read without its start (``_usage_after_a_key``).
_KEY_COLON = re.compile(_ANY_KEY_RE + rb"[ \t\r\n]*:")
_WS = re.compile(rb"[ \t\r\n]*+")
# Every byte but a quote and the four that nest (``translate``'s delete argument).
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"{}[]')


def _nesting(bare: bytes) -> int:
    """How much deeper JSON outside strings (``bare``) leaves the nesting."""
    return bare.count(b"{") + bare.count(b"[") - bare.count(b"}") - bare.count(b"]")


def _backslashes_before(buf: bytes, k: int, start: int) -> int:
    """How many backslashes stand right before ``buf[k]`` (not looking before ``start``)."""
    j = k
    while j > start and buf[j - 1] == 0x5C:
        j -= 1
    return k - j


def _outside(seg: bytes) -> tuple[int, int]:
    """``seg`` lexed from outside any string: (the nesting it adds, where a string it leaves open starts,
    -1 if none). All in C but for a string left open: escapes out, then all but quotes and nesting bytes
    out, then the empty strings (two quotes in a row never change which bytes are inside a string)."""
    c = seg
    if b"\\" in c:  # (only inside strings: escaped backslashes, then escaped quotes, out)
        c = c.replace(b"\\\\", b"").replace(b'\\"', b"")
    c = c.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' not in c:
        return _nesting(c), -1
    parts = c.split(b'"')  # outside, inside, outside, ...: only strings holding nesting bytes are left
    nest = _nesting(b"".join(parts[0::2]))
    if len(parts) % 2:
        return nest, -1
    # A string left open: it starts at the last quote no odd run of backslashes escapes.
    k = len(seg)
    while True:
        k = seg.rfind(b'"', 0, k)
        if _backslashes_before(seg, k, 0) % 2 == 0:
            return nest, k


def _could_be_key(b: bytes) -> bool:
    """Whether ``b`` (a string's opening quote and what follows it, not its end) may begin the key."""
    i, n = 1, len(b)
    for lit, esc in _KEY_FORMS:
        if i == n:
            return True
        if b[i] == lit[0]:
            i += 1
        elif esc.startswith(b[i : i + 6]):
            if n - i < 6:
                return True
            i += 6
        else:
            return False
    return i == n


class BodyUsageScanner:
    """The ``usage`` of a JSON response body too large to hold, read as it passes: ``feed`` each chunk
    (from the body's start), ``usage()`` at its end. The top-level object's first ``usage`` key whose
    value is a usage object counts, wherever it stands (vLLM's chat answer puts ``prompt_logprobs`` and
    ``prompt_token_ids``, MiBs of them, after it; review s17-bigbody M1): strings and nesting are lexed
    across chunks, so a ``usage`` in a nested object, or in a string (a token's text, escaped quotes
    before it however many backslashes), is not taken, and any whitespace may stand before its ``:``
    (session 17's closing note, review s17-fixes-b L4, L5); the key may be spelled with ``\\u``
    escapes (``"\\u0075sage"``: JSON's same key; session 18's closing note), looked for only where the
    escape of one of its letters stands before the next plain key (one regex scan of the piece in all).
    Linear, and in C (``_outside``) but for a few steps per chunk, per string left open at a chunk's end and
    per string with an escaped quote before its end (a regex then): 0.7-2.3 ms/MiB on embeddings and
    ``prompt_logprobs`` bodies, under 0.1 on a long text, ~6 on a text with an escaped quote every 18
    bytes (the worst kind), against 0.4-0.9 for the depth-blind scanner before
    (``scripts/usage_scanner_cost.py``). Bounded: ``_KEY_MAX`` bytes held back between chunks (a
    string that may be the key), at most ``USAGE_VALUE_MAX`` bytes of a value; after
    the usage, nothing."""

    __slots__ = ("_colon", "_depth", "_done", "_esc", "_in_str", "_keep", "_usage", "_value")

    def __init__(self) -> None:
        self._depth = 0  # nesting where the lexing stands: 1 inside the top-level object
        self._in_str = False  # ... inside a string
        self._esc = False  # ... right after a backslash in a string (the next byte is escaped)
        self._keep = b""  # a chunk's last bytes, held back: a string opening there may be the key
        self._colon = False  # a top-level ``"usage"`` was read, its ``:`` (or not) not yet
        self._value: bytearray | None = None  # after a top-level key's ``:``: its value's bytes so far
        self._done = False
        self._usage: Usage | None = None

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if self._done:
            return
        if self._value is not None:
            rest = self._take(chunk)
            if rest is None:
                return
            chunk = rest
        if self._keep:
            chunk, self._keep = self._keep + chunk, b""
        self._lex(chunk, final)

    def _lex(self, buf: bytes, final: bool) -> None:
        i, n = 0, len(buf)
        # (a key spelled with escapes needs a backslash outside strings, looked for only in buffers that
        # have one at all (memchr): a key held back at a chunk's end comes whole with the next chunk)
        slashes = b"\\" in buf
        # The next plain candidate at or after ``i``, searched again only once ``i`` passed it (or the
        # buffer changed): a pass that stops short of it (a spelled key, a string) must not read the rest
        # of the buffer again (review s19-gw L5: quadratic in a body of many nested spelled keys).
        plain: re.Match[bytes] | None = None
        searched = False
        # Likewise the next escape of a key's letter (only then is a spelled key looked for before the
        # plain candidate): one scan of the buffer in all, not one per pass (closing-s19: 1.36x on bodies
        # with many ``\u00`` escapes, which each sent a pass to the spelled-key regex).
        letter: re.Match[bytes] | None = None
        letter_searched = not slashes
        while i < n:
            if self._colon:  # after a top-level key: whitespace, then ``:`` (a key) or not (a value)
                ws = _WS.match(buf, i)
                assert ws is not None  # (it matches the empty string)
                i = ws.end()
                if i == n:
                    return
                self._colon = False
                if buf[i] == 0x3A:
                    self._value = bytearray()
                    rest = self._take(buf[i + 1 :])
                    if rest is None:
                        return
                    buf, i, n = rest, 0, len(rest)
                    searched = False
                    letter, letter_searched = None, b"\\" not in buf
                continue
            if self._in_str:
                if self._esc:
                    self._esc = False
                    i += 1
                    continue
                k = buf.find(b'"', i)
                if k < 0:  # it goes on in the next chunk (its first byte escaped after an odd ``\`` run)
                    self._esc = _backslashes_before(buf, n, i) % 2 == 1
                    return
                if _backslashes_before(buf, k, i) % 2 == 0:  # (the usual case: its closing quote)
                    self._in_str = False
                    i = k + 1
                    continue
                tail = _STR_REST.match(buf, i)  # an escaped quote first: its escapes read in C
                assert tail is not None  # (it matches the empty string)
                i = tail.end()
                if tail.group(1) is not None:
                    self._in_str = False
                elif tail.group(2) is not None:  # (the next chunk's first byte is escaped)
                    self._esc = True
                continue
            if not searched or (plain is not None and plain.start() < i):
                plain, searched = _CANDIDATE.search(buf, i), True
            m = plain
            stop = n if m is None else m.start()
            key_end = stop + len(_KEY)
            if not letter_searched or (letter is not None and letter.start() < i):
                letter, letter_searched = _LETTER_ESCAPE.search(buf, i), True
            if letter is not None and letter.start() < stop:  # (before the key: one spelled with escapes?)
                spelled = _CANDIDATE_ANY.search(buf, i, stop)
                if spelled is not None:
                    m, stop, key_end = spelled, spelled.start(), spelled.end(1)
            nest, opened = _outside(buf if i == 0 and stop == n else buf[i:stop])
            self._depth += nest
            if opened < 0:
                if m is None:
                    return
                i = key_end  # a key ``"usage"``, lexed whole
                self._colon = self._depth == 1
                continue
            e = i + opened  # a string opens here, not closed before ``stop`` (a candidate inside it)
            if m is None and not final and n - e < _KEY_MAX and _could_be_key(buf[e:]):
                self._keep = buf[e:]  # (it may be the key: lexed again with the next chunk)
                return
            self._in_str = True
            i = e + 1

    def _take(self, data: bytes) -> bytes | None:
        v = self._value
        assert v is not None
        v += data
        raw = bytes(v)
        after = raw.lstrip()
        text = after[:USAGE_VALUE_MAX]
        try:
            obj, end = _RAW.raw_decode(text.decode("utf-8", "replace"))
        except ValueError:
            if len(after) >= USAGE_VALUE_MAX:
                self._done, self._value = True, None
            return None
        self._value = None
        self._usage = usage_from({"usage": obj})
        if self._usage is None:
            return raw[len(raw) - len(after) + _end_bytes(text, end) :]
        self._done = True
        return None

    def usage(self) -> Usage | None:
        if not self._done and self._value is None:
            self.feed(b"", final=True)
        return self._usage


def _usage_after_a_key(ev: bytes) -> Usage | None:
    """The usage in an event cut at the tail's start (where its strings and nesting stand there is
    unknown): ``usage_from``'s of the whole event, as far as the kept bytes show it. From the first
    ``usage`` key on (an unescaped ``"usage"`` before a ``:`` is a key in JSON: inside a string its
    quotes are escaped) the bytes are lexed as ``BodyUsageScanner`` lexes a body, and the event's end
    (its object closed) gives that key's depth: the event's own ``usage`` (depth 1) counts, else one in
    an object one level down held by ``response`` (a Responses ``response.completed``'s) or ``message``
    (an Anthropic ``message_start``'s); a ``usage`` nested deeper (in a choice, an output item, a tool's
    schema) is not taken (session 18's closing note: the first ``"usage":`` of any depth was). The key
    holding the object one level down that is open at the first key is read backward from it (JSON
    lexes backward too: outside strings a quote ends one, and its start is the previous quote no odd run
    of backslashes escapes); where the cut dropped that key (a long answer's ``response.completed``)
    the tail cannot tell, and that object's usage is taken (review s19-gw L2: before, any object's one
    level down was, its key shown or not)."""
    m = _KEY_COLON.search(ev)
    # (An escaped quote is no key; nor one whose backslashes, if any, may go on before the cut.)
    while m is not None and ((run := _backslashes_before(ev, m.start(), 0)) % 2 or run == m.start()):
        m = _KEY_COLON.search(ev, m.start() + 1)
    if m is None:
        return None
    rest = ev[m.start() :]
    closes, opened = _outside(rest)
    if opened >= 0 or closes >= 0:
        return None  # (not the end of an object: a string left open, or nothing closed)
    depth = -closes  # the first key's depth in the event's object
    # (``BodyUsageScanner`` takes a key at its depth 1: what stood at the event's level 1 before is there)
    scan = BodyUsageScanner()
    scan._depth = depth
    scan.feed(rest, final=True)
    usage = scan.usage()
    if usage is not None or depth < 2:
        return usage
    # The object one level down open at the first key: its own usage if its key allows, then the event's
    # rest after it, whole (its keys shown): ``usage_from``'s reading of it.
    end = _close_of(rest, depth - 1)
    if end < 0:
        return None
    key = _holding_key(ev, m.start(), depth - 2)
    if key is not None and b"\\" in key:  # (a key spelled with escapes, as JSON reads it)
        try:
            key = json.loads(b'"' + key + b'"').encode()
        except ValueError:
            key = b""
    if key in (None, b"response", b"message"):
        scan = BodyUsageScanner()
        scan._depth = depth - 1
        scan.feed(rest[:end], final=True)
        usage = scan.usage()
        if usage is not None:
            return usage
    after = rest[end:].lstrip(b" \t\r\n")
    if not after.startswith(b","):
        return None
    try:  # (``json``: read as leniently as the whole event's ``Infinity`` / ``NaN`` are elsewhere)
        return usage_from(json.loads(b"{" + after[1:].rstrip(b" \t\r\n")))
    except ValueError:
        return None


_STRUCTURE = re.compile(rb'["{}\[\]]')


def _close_of(seg: bytes, levels: int) -> int:
    """Where, in ``seg`` lexed from outside any string, the ``levels``-th enclosing container has closed
    (the index past its closing byte); -1 if it does not."""
    nest, i = 0, 0
    while (s := _STRUCTURE.search(seg, i)) is not None:
        c, i = seg[s.start()], s.end()
        if c == 0x22:  # a string: to its closing quote
            while True:
                k = seg.find(b'"', i)
                if k < 0:
                    return -1
                i = k + 1
                if _backslashes_before(seg, k, 0) % 2 == 0:
                    break
        elif c in b"{[":
            nest += 1
        else:
            nest -= 1
            if nest == -levels:
                return i
    return -1


def _holding_key(ev: bytes, pos: int, skip: int) -> bytes | None:
    """The key that holds the container around ``pos`` (outside any string in ``ev``) once ``skip``
    enclosing containers are passed, read backward: its raw bytes; ``b""`` for none (an array's
    element); None where the cut (``ev``'s start) comes first."""
    rev = ev[:pos][::-1]  # (one pass backward: the structure bytes found in the reversed copy)
    nest, r = 0, 0
    while True:
        found = _STRUCTURE.search(rev, r)
        if found is None:
            return None
        i = pos - 1 - found.start()
        c = ev[i]
        if c == 0x22:  # a string's end, read backward: its start
            i = _string_start(ev, i)
            if i < 0:
                return None
        elif c in b"}]":
            nest += 1
        elif nest:
            nest -= 1
        elif skip:
            skip -= 1
        else:  # the opening byte: a key before it, ``"...":``, or none
            j = len(ev[:i].rstrip(b" \t\r\n"))
            if j == 0:
                return None
            if ev[j - 1] != 0x3A:
                return b""
            k = len(ev[: j - 1].rstrip(b" \t\r\n"))
            if k == 0 or ev[k - 1] != 0x22:
                return None
            start = _string_start(ev, k - 1)
            return None if start < 0 else ev[start + 1 : k - 1]
        r = pos - i


def _string_start(ev: bytes, end: int) -> int:
    """The opening quote of the string whose closing quote is ``ev[end]``; -1 where the cut may have
    taken it (a run of backslashes reaching ``ev``'s start)."""
    k = end
    while True:
        k = ev.rfind(b'"', 0, k)
        if k < 0:
            return -1
        run = _backslashes_before(ev, k, 0)
        if run == k and run:
            return -1
        if run % 2 == 0:
            return k


def _end_bytes(text: bytes, end: int) -> int:
    """Bytes of ``text`` in its first ``end`` decoded characters."""
    return len(text.decode("utf-8", "replace")[:end].encode())
