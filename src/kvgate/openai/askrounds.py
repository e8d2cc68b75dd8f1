"""Asking where a Responses id is kept: the round both front doors run, whatever they ask over.

vLLM keeps a stored response in the memory of the server that made it (``openai.responses``); a door that
does not know an id's home asks ``GET /v1/responses/{id}`` of its candidates: ``kvgate serve`` its ready
endpoints (``gateway.locate``), ``kvgate serve --clusters`` its clusters' gateways (``multicluster.lookups``).
Each door sends its own asks (``Ask``: a candidate and the round's due time in, the status out, None for no
answer); this is the rest, one copy for both (they had drifted: review s26-rev-prev26 F3 and F4 reached one):

- **One round per (id, credentials, candidates)**, shared by the requests naming it then: another key may
  be refused where this one is not, other candidates may hold what these do not (F1). It runs in a task of
  its own: a waiter leaving (its client gone, its own deadline passed) ends its wait, not the round the
  others share; the **last waiter leaving cancels it** (its asks abort), so rounds in flight never outnumber
  the requests in flight (F3).
- **Bounded**: ``fanout`` asks of one round at once, ``asks_max`` across all of a door's rounds (a flood of
  unknown ids sends at most that many at once; the rest wait within their bound), the whole round within
  ``bound_s``; an ask still out then counts as one that could not answer.
- **Each answer classified** (``classify``): 200 here (the first one ends the round); 401/403/407 refused
  (this key may not ask there: not "not here", never kept); a status in the door's ``unsure`` set, or no
  answer, could not answer (it may be the home: ``Found.unanswered``, the door's 503); any other 5xx is an
  answer (the server is up and its route fails, a request sent there fares no better: not here, never kept,
  F4); any other status not here.
- **Misses remembered**: found nowhere with every candidate answering "not here" (none refused, none
  failed, none silent), the id is skipped for ``miss_ttl_s`` per (id, candidates) (a client retrying a
  lost id costs a round per that, not one per request); at most ``misses_max`` of them, the oldest dropped.

``unsure`` is the door's because what it asks differs. A model server answers 408/425/429 when busy
(``UNSURE``). A cluster's gateway is a door itself: its 503 is often its own "could not ask" (a ``kvgate
serve`` there answers 503 when one of its endpoints could not be asked, or the home it knows is not
ready), its 502/504 a home it knows that failed or timed out, so for it those may hide the home too
(``CLUSTER_UNSURE``). Time is the caller's: ``clock`` for the misses (injected), the loop's for the bound.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

# An ask's outcome (``classify``).
HERE, NOT_HERE, FAILED, REFUSED, UNSURE_ = range(5)
UNSURE = frozenset({408, 425, 429})  # a model server's "busy": no answer, it may be the home
CLUSTER_UNSURE = UNSURE | {502, 503, 504}  # a gateway's "could not ask (or reach) the home" too
REFUSED_STATUSES = frozenset({401, 403, 407})

# (candidate, the round's due in loop time) -> the answer's status, None for none (unreachable, cut, late)
Ask = Callable[[str, float], Awaitable[int | None]]


class Found(NamedTuple):
    """A round's outcome: the home (None: not found), how many candidates were asked and how many could
    not answer (no answer, an ``unsure`` status, nothing in time: any of them may be the home)."""

    home: str | None
    asked: int
    unanswered: int
    refused: int = 0  # answered 401/403/407: this key may not ask there (not "not here", never kept)


def classify(status: int | None, unsure: frozenset[int] = UNSURE) -> int:
    """HERE (200), UNSURE_ (None or a status in ``unsure``), REFUSED (401/403/407), FAILED (another 5xx),
    else NOT_HERE."""
    if status is None or status in unsure:
        return UNSURE_
    if status == 200:
        return HERE
    if status in REFUSED_STATUSES:
        return REFUSED
    return FAILED if status >= 500 else NOT_HERE


class _Round:
    """A round in flight and how many requests wait on it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[Found]) -> None:
        self.task, self.waiters = task, 0


class AskRounds:
    """One door's rounds (per process: each ``--workers`` worker its own). ``noun``: what a candidate is,
    for the log line."""

    def __init__(
        self,
        clock: Callable[[], float],
        log: logging.Logger,
        *,
        noun: str,
        bound_s: float,
        fanout: int,
        asks_max: int,
        miss_ttl_s: float,
        misses_max: int,
        unsure: frozenset[int] = UNSURE,
    ) -> None:
        self.clock, self._log, self._noun = clock, log, noun
        self.bound_s, self.fanout, self.miss_ttl_s, self.misses_max = bound_s, fanout, miss_ttl_s, misses_max
        self.unsure = unsure
        self._rounds: dict[tuple[str, str, frozenset[str]], _Round] = {}
        self._misses: OrderedDict[tuple[str, frozenset[str]], float] = OrderedDict()
        self._asks = asyncio.Semaphore(asks_max)
        self.rounds = 0  # rounds run (a test's and an operator's count)

    def missed(self, response_id: str, where: frozenset[str]) -> bool:
        """Found nowhere among ``where`` by a round less than ``miss_ttl_s`` ago."""
        until = self._misses.get((response_id, where))
        if until is None:
            return False
        if until <= self.clock():
            del self._misses[(response_id, where)]
            return False
        return True

    async def locate(
        self,
        response_id: str,
        credentials: str,
        candidates: Sequence[str],
        ask: Ask,
        due: float | None = None,
    ) -> Found:
        """Where ``response_id`` is kept among ``candidates``, asked with ``ask`` (the round's first
        caller's: a round is shared only by callers with the same ``credentials`` and candidates).
        ``due``: this caller's own bound (loop time): its wait ends there (TimeoutError)."""
        where = frozenset(candidates)
        if self.missed(response_id, where):
            return Found(None, 0, 0)
        key = (response_id, credentials, where)
        entry = self._rounds.get(key)
        if entry is None:
            task = asyncio.get_running_loop().create_task(self._round(response_id, where, candidates, ask))
            entry = self._rounds[key] = _Round(task)
            task.add_done_callback(functools.partial(self._done, key, entry))
        task = entry.task
        entry.waiters += 1
        try:
            async with asyncio.timeout_at(due):
                return await asyncio.shield(task)  # (shielded: one waiter leaving ends its own wait)
        finally:
            entry.waiters -= 1
            if not entry.waiters and not task.done():
                task.cancel()  # (nobody wants the answer: its asks end with it)
                self._drop(key, entry)

    def _done(self, key: tuple[str, str, frozenset[str]], entry: _Round, _t: object) -> None:
        self._drop(key, entry)

    def _drop(self, key: tuple[str, str, frozenset[str]], entry: _Round) -> None:
        if self._rounds.get(key) is entry:
            del self._rounds[key]

    async def _round(
        self, response_id: str, where: frozenset[str], candidates: Sequence[str], ask: Ask
    ) -> Found:
        self.rounds += 1
        gate = asyncio.Semaphore(self.fanout)
        loop = asyncio.get_running_loop()
        due = loop.time() + self.bound_s

        async def one(name: str) -> tuple[str, int]:
            async with gate, self._asks:
                return name, classify(await ask(name, due), self.unsure)

        asks = [loop.create_task(one(c)) for c in candidates]
        home, nots, refused, failed = None, 0, 0, 0
        try:
            async with asyncio.timeout_at(due):
                for done in asyncio.as_completed(asks):
                    name, got = await done
                    if got == HERE:
                        home = name
                        break
                    if got != UNSURE_:
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
            self._misses[mkey] = self.clock() + self.miss_ttl_s
            self._misses.move_to_end(mkey)
            while len(self._misses) > self.misses_max:
                self._misses.popitem(last=False)
        self._log.info(
            "response %s: %s (asked %d %s, %d could not answer, %d refused the key)", response_id,
            f"kept at {home}" if home else "not found", found.asked, self._noun, found.unanswered, refused,
        )  # fmt: skip
        return found
