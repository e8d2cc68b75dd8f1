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
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from kvgate.openai.sse import next_event_end
from kvgate.openai.usage import event_obj

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
