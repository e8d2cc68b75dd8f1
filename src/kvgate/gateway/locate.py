"""Where a Responses id is kept when the door does not know: asked of the endpoints.

vLLM (and SGLang, which ported it) keeps a stored response in the memory of the server that made it and
answers ``GET /v1/responses/{id}`` there with the ``response`` object, anywhere else 404 ``Response with id
'...' not found.`` (always 404 where the store is off: ``VLLM_ENABLE_RESPONSES_API_STORE`` unset). The door
remembers each id's home from the answer that made it (``Proxy.responses``, its kept turns), but not across
its own restart, nor past its bounded tables (``HOMES_MAX``, ``HOMES_TTL_S``, ``--response-turns``). A
follow-up (``previous_response_id``) or a lookup naming such an id was placed by score, or sent to the least
busy endpoint: vLLM's 404 at a server that never held it, while the response sat on another.

So the door asks. ``Locator.find`` sends ``GET /v1/responses/{id}`` to the candidates (the healthy endpoints
the request may go to), ``FANOUT`` at a time (and all rounds together ``ASKS_MAX``: a flood of follow-ups
naming random ids sends at most that many asks at once, the rest wait within their bound, then 503), all
within ``LOCATE_S``; the first 200 names the home (the caller remembers it, as if it had made it: under
``--workers`` in the shared table too). Every candidate answering otherwise (404, another 4xx, a 5xx: it
cannot serve that id) means nowhere: remembered ``MISS_TTL_S`` for those candidates when all said 404/4xx
(a client retrying a lost id costs one round of asks per that, not one per request), and the request goes
on as before, where vLLM's own 404 is then the truth. A 401/403/407 says the key may not ask there (not
"not here": never remembered; the request goes on and the server's own 401/403 answers it). A candidate
that could not answer (a connection error, 408/425/429, no answer within the bound) may be the home:
``unanswered`` > 0, and the caller answers 503 with ``Retry-After`` rather than a 404 from a server that
may not be the home. Concurrent requests for one id with the same key and candidates share one round
(``_rounds``); the round runs in a task of its own, so a client leaving does not end it for the others,
and ends within ``LOCATE_S`` or when its last waiter leaves (so rounds never outnumber the requests in
flight). All these bounds and tables are per process (each ``--workers`` worker its own).

A lookup generates nothing, so an ask is not admitted, picked, counted as load or charged (as
``gateway.lookups``); it carries the client's key (``authorization``, ``x-api-key``) where the gateway has
none of its own, as a lookup does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import quote

from kvgate.gateway.upstream import UpstreamPool

log = logging.getLogger("kvgate.gateway")

LOCATE_S = 2.0  # the whole round's bound (vLLM answers a GET from its API server's memory, not its engine)
FANOUT = 16  # one round's asks in flight at once
ASKS_MAX = 64  # all rounds' asks in flight at once (a flood of unknown ids: at most this many GETs out)
MISS_TTL_S = 2.0
MISSES_MAX = 4096
RETRY_AFTER = "1"  # a 503 for a home that could not be asked (or reached)


class Found(NamedTuple):
    """A round's outcome: the home (None: not found), how many candidates were asked and how many could
    not answer (a connection error, a 5xx, no answer in time: any of them may be the home)."""

    home: str | None
    asked: int
    unanswered: int
    refused: int = 0  # answered 401/403/407: this key may not ask there (not "not here", never kept)


# An ask's outcome. UNSURE: no answer (a connection error, no answer in time, 408/425/429: busy): it may
# be the home. A 5xx is an answer (the server is up and could not serve the GET: its responses route is
# failing, so a follow-up there fares no better): counted not here, never kept as a miss (review
# s26-rev-prev26 F4: one endpoint failing its GETs made every lost id a 503 forever).
HERE, NOT_HERE, FAILED, REFUSED, UNSURE = range(5)
_UNSURE = frozenset({408, 425, 429})
_REFUSED = frozenset({401, 403, 407})


class _Round:
    """A round in flight and how many requests wait on it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[Found]) -> None:
        self.task, self.waiters = task, 0


class Locator:
    """One door's asks (``kvgate serve``: one per process, each worker its own)."""

    def __init__(self, upstream: UpstreamPool, clock: Callable[[], float]) -> None:
        self.upstream, self.clock = upstream, clock
        # (id, the client's key, the candidates) -> [the round, its waiters]
        self._rounds: dict[tuple[str, str, frozenset[str]], _Round] = {}
        self._misses: OrderedDict[tuple[str, frozenset[str]], float] = OrderedDict()
        self._asks = asyncio.Semaphore(ASKS_MAX)
        self.rounds = 0  # rounds run (a test's and an operator's count)

    def missed(self, response_id: str, where: frozenset[str]) -> bool:
        """Found nowhere among ``where`` (addresses) by a round less than ``MISS_TTL_S`` ago."""
        until = self._misses.get((response_id, where))
        if until is None:
            return False
        if until <= self.clock():
            del self._misses[(response_id, where)]
            return False
        return True

    async def find(
        self,
        response_id: str,
        candidates: Sequence[tuple[str, ssl.SSLContext | None]],
        auth: str = "",
    ) -> Found:
        """Ask ``candidates`` (address, TLS) where ``response_id`` is kept. ``auth``: header lines (each
        ending CRLF) sent with each ask (the client's key)."""
        where = frozenset(a for a, _ in candidates)
        if self.missed(response_id, where):
            return Found(None, 0, 0)
        # (shared only by callers with the same key and the same candidates: another key may be refused
        # where this one is not, other candidates may hold what these do not; review s26-rev-prev26 F1)
        key = (response_id, auth, where)
        entry = self._rounds.get(key)
        if entry is None:
            task = asyncio.get_running_loop().create_task(self._round(response_id, where, candidates, auth))
            entry = self._rounds[key] = _Round(task)
            task.add_done_callback(functools.partial(self._done, key, entry))
        task = entry.task
        entry.waiters += 1
        try:
            # (shielded: a client leaving ends its wait, not the round others share)
            return await asyncio.shield(task)
        finally:
            entry.waiters -= 1
            if not entry.waiters and not task.done():
                # (the last waiter left: nobody wants the answer; its asks end with it, so rounds stay
                # within the requests in flight, maxConcurrentRequests; review s26-rev-prev26 F3)
                task.cancel()
                self._drop(key, entry)

    def _done(self, key: tuple[str, str, frozenset[str]], entry: _Round, _t: object) -> None:
        self._drop(key, entry)

    def _drop(self, key: tuple[str, str, frozenset[str]], entry: _Round) -> None:
        if self._rounds.get(key) is entry:
            del self._rounds[key]

    async def _round(
        self,
        response_id: str,
        where: frozenset[str],
        candidates: Sequence[tuple[str, ssl.SSLContext | None]],
        auth: str,
    ) -> Found:
        self.rounds += 1
        path = "/v1/responses/" + quote(response_id, safe="")
        gate = asyncio.Semaphore(FANOUT)
        loop = asyncio.get_running_loop()
        due = loop.time() + LOCATE_S

        async def ask(address: str, tls: ssl.SSLContext | None) -> tuple[str, int]:
            async with gate, self._asks:
                return address, await self._ask(address, tls, path, auth, due)

        asks = [loop.create_task(ask(a, t)) for a, t in candidates]
        home, nots, refused, failed = None, 0, 0, 0
        try:
            async with asyncio.timeout_at(due):
                for done in asyncio.as_completed(asks):
                    address, got = await done
                    if got == HERE:
                        home = address
                        break
                    if got != UNSURE:
                        nots += 1
                        refused += got == REFUSED
                        failed += got == FAILED
        except TimeoutError:
            pass
        finally:
            for t in asks:
                t.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        found = Found(home, len(asks), 0 if home is not None else len(asks) - nots, refused)
        if home is None and not found.unanswered and not refused and not failed:
            # (a refusal is not "not here": that key may not ask, another may; a 5xx may pass: neither is
            # kept as a miss)
            mkey = (response_id, where)
            self._misses[mkey] = self.clock() + MISS_TTL_S
            self._misses.move_to_end(mkey)
            while len(self._misses) > MISSES_MAX:
                self._misses.popitem(last=False)
        log.info(
            "response %s: %s (asked %d endpoints, %d could not answer, %d refused the key)",
            response_id, f"kept at {home}" if home else "not found", found.asked, found.unanswered, refused,
        )  # fmt: skip
        return found

    async def _ask(self, address: str, tls: ssl.SSLContext | None, path: str, auth: str, due: float) -> int:
        """HERE (200), REFUSED (401/403/407), FAILED (a 5xx), UNSURE (no answer, 408/425/429), else
        NOT_HERE."""
        head = f"GET {path} HTTP/1.1\r\nhost: {address}\r\n{auth}content-length: 0\r\n\r\n"
        try:
            resp = await self.upstream.request(address, head.encode("utf-8", "surrogateescape"), b"", due,
                                               tls)  # fmt: skip
        except (TimeoutError, OSError):  # (UpstreamError, ReadTimeout, DeadlinePassed among them)
            return UNSURE
        try:
            status = resp.status
        finally:
            # (the answer's body is not wanted: read when it is all here, so the connection is kept)
            with contextlib.suppress(Exception):
                if resp.read_now() is None:
                    resp.close()
            resp.release()
        if status == 200:
            return HERE
        if status in _UNSURE:
            return UNSURE
        if status in _REFUSED:
            return REFUSED
        return FAILED if status >= 500 else NOT_HERE
