"""Responses API follow-ups: a request naming ``previous_response_id`` goes where that response was made.

vLLM keeps a stored response (``store``, on with ``VLLM_ENABLE_RESPONSES_API_STORE=1``) in the memory of
the server that made it: a follow-up naming it on another replica is a 404 ("Response with id '...' not
found"). The doors remember which replica answered each response id (``ResponseHomes``: bounded, with a
TTL, time injected) from the answer itself (``ResponseIdReader``: a JSON answer's top-level ``id``, a
stream's ``response.created`` event, however long, in however many reads), and send a follow-up there,
no header needed: ``kvgate serve`` to the endpoint, ``kvgate serve --clusters`` to the cluster (whose own
gateway then does the same).
"""

from __future__ import annotations

import re
import sys
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from kvgate.openai.sse import next_event_end
from kvgate.openai.usage import event_obj
from kvgate.scheduling.prefix import MAX_PREFIX_BLOCKS
from kvgate.scheduling.types import Conversation, InferenceRequest, Usage

RESPONSES_PATH = "/v1/responses"
# How many response ids a door remembers, and for how long (seconds since the answer).
HOMES_MAX = 100_000
HOMES_TTL_S = 3600.0
# The most bytes of an answer's start kept while its id is not found (a stream's ``response.created``
# event holds the request's settings, its instructions and tools included: the id comes first in vLLM's
# and is read wherever the event ends; this bounds the search for other servers' answers).
ID_HEAD_BYTES = 64 * 1024
_ID_MAX = 256  # longer ids are not remembered
# A stored response's retrieval (``GET``) and cancel (``POST``): routed to the server that made it.
LOOKUP_PREFIX = RESPONSES_PATH + "/"
CANCEL_SUFFIX = "/cancel"


def lookup_target(method: str, path: str) -> tuple[str, str] | tuple[int, str, str]:
    """A lookup path (``LOOKUP_PREFIX``...): ``(response id, method)`` for what vLLM serves there (``GET
    /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel``), else ``(status, message, Allow)`` to answer:
    404 for a path vLLM does not serve, 405 (with the method it takes) for another method."""
    rest = path[len(LOOKUP_PREFIX) :]
    want = "GET"
    if rest.endswith(CANCEL_SUFFIX):
        rest, want = rest[: -len(CANCEL_SUFFIX)], "POST"
    if not path.startswith(LOOKUP_PREFIX) or not rest or "/" in rest or len(rest) > _ID_MAX:
        return 404, f"no route for {method} {path}", ""
    if method != want:
        return 405, f"{method} is not allowed on {path}; use {want}", want
    return rest, want


def previous_response_id(path: str, body: dict[str, Any]) -> str | None:
    """The response a Responses request follows up on (None: not one, or not a usable id)."""
    if path != RESPONSES_PATH:
        return None
    prev = body.get("previous_response_id")
    return prev if isinstance(prev, str) and 0 < len(prev) <= _ID_MAX else None


H = TypeVar("H")
# How many earlier turns a door keeps for follow-ups' estimates (``ResponseTurns``; ``kvgate serve
# --response-turns``): each at most ``MAX_PREFIX_BLOCKS`` block hashes (8 bytes each) and its token count,
# about 2.3 KB at most, so ~23 MB for the default's 10,000 (a turn shorter than 256 blocks less).
TURNS_MAX = 10_000


class Turn:
    """A finished Responses turn, kept for the follow-up naming it: the conversation's tokens vLLM 0.32
    carries into a follow-up (every turn's input and output so far, without any turn's tools,
    ``instructions`` and reasoning: ``construct_input_messages`` drops earlier system messages, puts the
    follow-up's own first and skips the reasoning output), the prefix scorer's block chain of this turn's
    prompt (``scheduling.types.Conversation``) and the key of the head (tools + instructions) that chain
    starts with (``lead_key``, 0: none), and where it was made (``home``, the endpoint that answered it;
    "": not known): a follow-up whose id's home is not known otherwise is pinned there (the holder of the
    chain and of the stored response; elsewhere vLLM answers 404)."""

    __slots__ = ("by_ids", "chunk", "hashes", "home", "lead_key", "model", "tokens")

    def __init__(
        self,
        tokens: int,
        hashes: array[int],
        chunk: int,
        by_ids: bool,
        model: str,
        lead_key: int = 0,
        home: str = "",
    ) -> None:
        self.tokens, self.hashes, self.chunk, self.by_ids, self.model = tokens, hashes, chunk, by_ids, model
        self.lead_key, self.home = lead_key, home


def finished_turn(req: InferenceRequest, usage: Usage | None, home: str = "") -> Turn | None:
    """The turn ``req`` made (its answer done, 2xx, by ``home``), or None: not a stored Responses turn, or
    its id not read."""
    conv = req.conversation
    if conv is None or conv.response_id is None or not conv.stored:
        return None
    lead = conv.lead_tokens
    if usage is not None and usage.prompt_tokens > 0:
        # (the head's share of the real count as of this turn's own part's estimate: the tokenizer's
        # density applies to it, not to the kept earlier turns, real tokens already)
        own_real, own_est = usage.prompt_tokens - conv.head_tokens, req.prompt_tokens - conv.head_tokens
        if lead and own_real > 0 and own_est > 0:
            lead = min(own_real, lead * own_real // own_est)
        elif lead and req.prompt_tokens > 0:
            lead = min(usage.prompt_tokens, lead * usage.prompt_tokens // req.prompt_tokens)
        # (vLLM 0.32 carries the earlier output's message text, not its reasoning: ``output_tokens``
        # counts both, ``output_tokens_details.reasoning_tokens`` the reasoning)
        tokens = usage.prompt_tokens - lead + usage.completion_tokens - usage.reasoning_tokens
    else:  # (no usage: the estimate, the earlier turns included; its output unknown)
        tokens = max(0, req.prompt_tokens - lead)
    # (at most the default window's blocks, whatever ``maxPrefixBlocksToMatch`` says: the bound per turn; a
    # follow-up then continues from the last one kept, still a prefix of the conversation)
    chain = array("Q", conv.chain[:MAX_PREFIX_BLOCKS])
    return Turn(tokens, chain, conv.chain_chunk, conv.chain_by_ids, req.model, conv.lead_key, home)


# The most memory the heads (tools + instructions) a door keeps by their key take (``Leads``): 4 MiB per
# door process (per worker under ``--workers``): 63 heads of 64 KB of ASCII, ~17,500 short ones; fewer
# non-ASCII ones (2 or 4 bytes a character), how many depending on the table's history (it does not shrink
# on deletes): 10,129 short emoji heads in scripts/leads_memory.py, 14,920 after 300,000 inserts (review
# s25-rev-fixprev25). (Before review s25-rev-prev25 F3 it counted characters: 58 MiB for 233,016 short
# heads.)
LEADS_BYTES = 4 * 1024 * 1024
_ASCII_STR = sys.getsizeof("")  # (an ASCII str of n characters: this + n bytes)
_KEY_BYTES = sys.getsizeof(1 << 62)  # (a key, a 64-bit hash: at most this)


class Leads:
    """Heads (a Responses turn's tools + ``instructions``, ``follow_up``'s ``lead_chars`` of its prompt
    text) by their key: a follow-up whose earlier turn's key names a head kept here compares its own head
    with it (``str.startswith``: a memcmp, no copy) instead of hashing it (SipHash over every character,
    18.5 us at 64 KB); the same text, the same key, exactly as hashing found. The latest heads kept
    (``keep``) are held, ``max_bytes`` of memory at most: each head's str and int key (as ``sys.getsizeof``
    counts them: 1, 2 or 4 bytes a character) and the OrderedDict's own (its table, which grows in steps
    and does not shrink on deletes, and its nodes: ``sys.getsizeof`` of it), whatever the heads' sizes."""

    __slots__ = ("_bytes", "_heads", "max_bytes")

    def __init__(self, max_bytes: int = LEADS_BYTES) -> None:
        self.max_bytes, self._bytes = max_bytes, 0  # (``_bytes``: the kept strs and keys)
        self._heads: OrderedDict[int, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._heads)

    @property
    def held_bytes(self) -> int:
        """The memory the kept heads hold, as counted against ``max_bytes`` (the keys at their largest)."""
        return self._bytes + sys.getsizeof(self._heads)

    def key(self, text: str, lead_chars: int, known: int, keep: bool = True) -> int:
        """The key of ``text``'s first ``lead_chars`` characters (``hash``, 0 -> 1), ``known`` (an earlier
        turn's key) without hashing when the head kept under it is those characters. ``keep``: the head
        is kept for a later turn (False: no turn can name it, e.g. ``store: false``)."""
        heads = self._heads
        kept = heads.get(known) if known else None
        if kept is not None and len(kept) == lead_chars and text.startswith(kept):
            heads.move_to_end(known)
            return known
        lead = text[:lead_chars]
        key = hash(lead) or 1
        if keep and key not in heads:
            # (an ASCII str's size without ``sys.getsizeof``, ~0.3 us a call: it is the empty one's + n)
            cost = (_ASCII_STR + len(lead) if lead.isascii() else sys.getsizeof(lead)) + _KEY_BYTES
            heads[key] = lead
            # (the table, read once per insert: it grows in steps and does not shrink on deletes)
            table = sys.getsizeof(heads)
            if cost + table > self.max_bytes:
                # It cannot fit beside the table even alone: not kept, and nothing evicted for it (else
                # every other head would go, then itself; review s25-rev-fixprev25 R2).
                # (only a table its insert grew, real memory, still evicts below)
                del heads[key]
                table = sys.getsizeof(heads)
            else:
                self._bytes += cost
            # (what the evicted entries free in the table is not counted back, so this errs by a node
            # or so towards evicting one more)
            over = self._bytes + table - self.max_bytes
            while over > 0 and heads:
                v = heads.popitem(last=False)[1]
                freed = (_ASCII_STR + len(v) if v.isascii() else sys.getsizeof(v)) + _KEY_BYTES
                self._bytes -= freed
                over -= freed
        return key


def follow_up(
    req: InferenceRequest, store: Any, turn: Turn | None, lead_chars: int = 0, leads: Leads | None = None
) -> None:
    """Mark a Responses request whose prompt text starts with ``lead_chars`` of its own tools and
    ``instructions`` (``ParsedBody.lead_chars``): its earlier ``turn`` (None: none known) added to its
    estimate, and handed to the prefix scorer as its head when that turn's chain started with the same
    head (vLLM then prefills this turn as that chain continued; another head, or none where it had one,
    and the earlier chain is not a prefix of this prompt: no head, the request scored on its own text). A
    ``Conversation`` is set when the server keeps this turn (``store``: the body's, True when absent; vLLM's
    ``if request.store``, so ``null`` keeps nothing) or it follows one (its estimate and head), so the turn
    it makes is kept in its turn (``finished_turn``) where it is stored (a follow-up with a false ``store``
    is not: vLLM stores neither its messages nor its response). ``leads``: the door's kept heads, so a
    follow-up repeating its earlier turn's head is not hashed again (prev25); None where no turn is kept
    (``--response-turns 0``). A head is kept there only for a turn that is stored (review s25-rev-prev25
    F3)."""
    text = req.prompt_text
    lead_chars = min(lead_chars, len(text))
    if not lead_chars:
        lead_key = 0
    elif leads is not None:
        lead_key = leads.key(text, lead_chars, turn.lead_key if turn is not None else 0, bool(store))
    else:
        lead_key = hash(text[:lead_chars]) or 1
    lead_tokens = req.prompt_tokens * lead_chars // len(text) if lead_chars else 0
    if turn is None:
        if store:
            req.conversation = Conversation(lead_chars=lead_chars, lead_tokens=lead_tokens, lead_key=lead_key)
        return
    req.prompt_tokens += turn.tokens
    same = turn.lead_key == lead_key
    req.conversation = Conversation(
        turn.tokens,
        turn.hashes if same else (),
        turn.chunk,
        turn.by_ids,
        turn.model,
        lead_chars=lead_chars,
        lead_tokens=lead_tokens,
        lead_key=lead_key,
        stored=bool(store),
    )


class ResponseTurns:
    """Response id -> its ``Turn``: the ``max_entries`` most recently kept or read (an LRU: a conversation
    in use stays), each for ``ttl_s`` after it was kept. ``max_entries`` 0 keeps none (off)."""

    __slots__ = ("_turns", "clock", "max_entries", "ttl_s")

    def __init__(
        self,
        max_entries: int = TURNS_MAX,
        ttl_s: float = HOMES_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._turns: OrderedDict[str, tuple[Turn, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._turns)

    def remember(self, response_id: str, turn: Turn) -> None:
        if not self.max_entries or not response_id or len(response_id) > _ID_MAX:
            return
        turns = self._turns
        turns[response_id] = (turn, self.clock() + self.ttl_s)
        turns.move_to_end(response_id)
        while len(turns) > self.max_entries:
            turns.popitem(last=False)

    def resize(self, max_entries: int) -> None:
        """A reload's ``limits.responseTurns``: the oldest turns beyond it go now (0: all, none kept)."""
        self.max_entries = max_entries
        while len(self._turns) > max_entries:
            self._turns.popitem(last=False)

    def get(self, response_id: str) -> Turn | None:
        entry = self._turns.get(response_id)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._turns[response_id]
            return None
        self._turns.move_to_end(response_id)
        return entry[0]


class ResponseHomes(Generic[H]):
    """Response id -> where it was made (an endpoint address; a cluster and its pod): the ``max_entries``
    latest, each for ``ttl_s`` after it was remembered (a lookup does not extend it)."""

    __slots__ = ("_homes", "clock", "max_entries", "ttl_s")

    def __init__(
        self,
        max_entries: int = HOMES_MAX,
        ttl_s: float = HOMES_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._homes: OrderedDict[str, tuple[H, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._homes)

    def remember(self, response_id: str, home: H) -> None:
        if not response_id or len(response_id) > _ID_MAX:
            return
        homes = self._homes
        homes[response_id] = (home, self.clock() + self.ttl_s)
        homes.move_to_end(response_id)
        while len(homes) > self.max_entries:
            homes.popitem(last=False)
        # Expired entries at the old end go as new ones come (entries are in expiry order).
        now = self.clock()
        while homes:
            first = next(iter(homes.values()))
            if first[1] > now:
                break
            homes.popitem(last=False)

    def forget(self, response_id: str) -> None:
        self._homes.pop(response_id, None)

    def home(self, response_id: str) -> H | None:
        entry = self._homes.get(response_id)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._homes[response_id]
            return None
        return entry[0]


class _IdOnly(msgspec.Struct):
    id: Any = None


_ID_ONLY = msgspec.json.Decoder(_IdOnly)
# A JSON answer whose first key is ``id`` (vLLM's and OpenAI's Responses objects start so).
_FIRST_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')
# A stream event's response object whose first key is ``id`` (vLLM's and OpenAI's ``response.created``:
# ``{"response": {"id": ...`` or ``{"type": ..., "response": {"id": ...``): found wherever the event ends,
# however long its instructions or tools. (Outside JSON strings only: a quote in a string is escaped.)
_RESPONSE_ID = re.compile(rb'"response"\s*:\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')
_OVERLAP = 320  # bytes of the last chunk searched again with the next: a match may straddle two reads


class ResponseIdReader:
    """The id of a Responses answer, read as its chunks pass (``feed`` each while ``done`` is False;
    ``response_id()`` at the end: None when not found).

    Cheap and bounded (review s18-doors M1, M2): the id is taken from the answer's first bytes as soon as
    they hold it (a JSON answer's leading ``"id"``; a stream's first ``"response": {"id": ...``, wherever
    its ``response.created`` event ends and in however many reads it comes), and nothing is kept or
    searched after that. Otherwise at most ``ID_HEAD_BYTES`` are kept: a JSON answer's whole body is
    decoded at the end if it fits; a stream's first complete event naming a response is parsed when it
    ends (a server whose response object does not start with ``id``)."""

    __slots__ = ("_head", "_id", "_parsed", "_sse", "_whole", "done")

    def __init__(self, sse: bool) -> None:
        self._sse = sse
        self._head: bytes | bytearray = b""
        self._whole = True  # the whole answer is in ``_head``
        self._parsed = 0  # (a stream: where the events not yet parsed start in ``_head``)
        self._id: str | None = None
        self.done = False  # found, or given up: feed no more

    def feed(self, chunk: bytes) -> None:
        if self.done or not chunk:
            return
        head = self._head
        start = max(0, len(head) - _OVERLAP)
        room = ID_HEAD_BYTES - len(head)
        if not head:  # (the first chunk: searched as it is, not copied)
            head = chunk if len(chunk) <= room else chunk[:room]
        else:
            if not isinstance(head, bytearray):
                head = bytearray(head)
            head += chunk[:room]
        self._head = head
        if len(chunk) > room:
            self._whole = False
        m = (_RESPONSE_ID.search(head, start) if self._sse else _FIRST_ID.match(head)) if head else None
        if m is not None:
            self._found(m.group(1).decode("utf-8", "replace"))
        elif self._sse:
            self._parse_events()
        # (a whole JSON body is still decoded at the end)
        if not self.done and len(head) >= ID_HEAD_BYTES and (self._sse or not self._whole):
            self._found(None)

    def _parse_events(self) -> None:
        """A stream: the complete events not parsed yet, until the first naming a response."""
        head = self._head
        while (end := next_event_end(head, self._parsed)) >= 0:
            event = head[self._parsed : end]
            self._parsed = end
            if b'"response"' not in event:
                continue
            obj = event_obj(event)
            inner = obj.get("response") if isinstance(obj, dict) else None
            rid = inner.get("id") if isinstance(inner, dict) else None
            self._found(rid if isinstance(rid, str) and 0 < len(rid) <= _ID_MAX else None)
            return

    def _found(self, rid: str | None) -> None:
        self._id, self.done, self._head = rid, True, b""

    def response_id(self) -> str | None:
        if self.done or self._sse:
            return self._id
        if not self._whole:
            return None
        try:
            rid = _ID_ONLY.decode(self._head).id
        except msgspec.DecodeError:
            return None
        return rid if isinstance(rid, str) else None
