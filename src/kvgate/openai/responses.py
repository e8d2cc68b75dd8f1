"""Responses API follow-ups: a request naming ``previous_response_id`` goes where that response was made.

vLLM keeps a stored response (``store``, on with ``VLLM_ENABLE_RESPONSES_API_STORE=1``) in the memory of
the server that made it: a follow-up naming it on another replica is a 404 ("Response with id '...' not
found"). The doors remember which replica answered each response id (``ResponseHomes``: bounded, with a
TTL, time injected) from the answer itself (``ResponseIdReader``: a JSON answer's top-level ``id``, a
stream's ``response.created`` event), and send a follow-up there, no header needed: ``kvgate serve`` to
the endpoint, ``kvgate serve --clusters`` to the cluster (whose own gateway then does the same).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from kvgate.openai.sse import split_events
from kvgate.openai.usage import event_obj

RESPONSES_PATH = "/v1/responses"
# How many response ids a door remembers, and for how long (seconds since the answer).
HOMES_MAX = 100_000
HOMES_TTL_S = 3600.0
# The bytes of an answer's start the id is read from (a stream's ``response.created`` event holds the
# request's settings and no output yet: a few KiB).
ID_HEAD_BYTES = 64 * 1024
_ID_MAX = 256  # longer ids are not remembered


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


class ResponseIdReader:
    """The id of a Responses answer, read from its first ``ID_HEAD_BYTES`` as they pass: ``feed`` each
    chunk (a copy of at most that many bytes is kept), ``response_id()`` at the end (None: not found)."""

    __slots__ = ("_head", "_sse", "_whole")

    def __init__(self, sse: bool) -> None:
        self._sse = sse
        self._head = bytearray()
        self._whole = True  # the whole answer is in ``_head``

    def feed(self, chunk: bytes) -> None:
        room = ID_HEAD_BYTES - len(self._head)
        if room <= 0:
            if chunk:
                self._whole = False
            return
        self._head += chunk[:room]
        if len(chunk) > room:
            self._whole = False

    def response_id(self) -> str | None:
        head = bytes(self._head)
        if self._sse:
            # The first event naming a response: ``response.created`` (``{"response": {"id": ...}}``).
            for event in split_events(head)[:-1]:
                if b'"response"' not in event:
                    continue
                obj = event_obj(event)
                inner = obj.get("response") if isinstance(obj, dict) else None
                rid = inner.get("id") if isinstance(inner, dict) else None
                if isinstance(rid, str):
                    return rid
            return None
        m = _FIRST_ID.match(head)
        if m is not None:
            return m.group(1).decode("utf-8", "replace")
        if not self._whole:
            return None
        try:
            rid = _ID_ONLY.decode(head).id
        except msgspec.DecodeError:
            return None
        return rid if isinstance(rid, str) else None
