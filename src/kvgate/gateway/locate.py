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
may not be the home. Concurrent requests for one id with the same key and candidates share one round; the
round runs in a task of its own, so a client leaving does not end it for the others, and ends within
``LOCATE_S`` or when its last waiter leaves (so rounds never outnumber the requests in flight). The round's
mechanics are the ones the hub's ``multicluster.lookups`` runs too (``openai.askrounds``); this module is
the ask itself, over the gateway's pooled upstream connections. All these bounds and tables are per
process (each ``--workers`` worker its own).

A lookup generates nothing, so an ask is not admitted, picked, counted as load or charged (as
``gateway.lookups``); it carries the client's key (``authorization``, ``x-api-key``) where the gateway has
none of its own, as a lookup does.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from urllib.parse import quote

from kvgate.gateway.upstream import UpstreamPool
from kvgate.openai.askrounds import UNSURE, AskRounds, Found

__all__ = ["ASKS_MAX", "FANOUT", "LOCATE_S", "MISSES_MAX", "MISS_TTL_S", "RETRY_AFTER", "Found", "Locator"]

log = logging.getLogger("kvgate.gateway")

LOCATE_S = 2.0  # the whole round's bound (vLLM answers a GET from its API server's memory, not its engine)
FANOUT = 16  # one round's asks in flight at once
ASKS_MAX = 64  # all rounds' asks in flight at once (a flood of unknown ids: at most this many GETs out)
MISS_TTL_S = 2.0
MISSES_MAX = 4096
RETRY_AFTER = "1"  # a 503 for a home that could not be asked (or reached)


class Locator(AskRounds):
    """One door's asks (``kvgate serve``: one per process, each worker its own)."""

    def __init__(self, upstream: UpstreamPool, clock: Callable[[], float]) -> None:
        super().__init__(
            clock, log, noun="endpoints", bound_s=LOCATE_S, fanout=FANOUT, asks_max=ASKS_MAX,
            miss_ttl_s=MISS_TTL_S, misses_max=MISSES_MAX, unsure=UNSURE,
        )  # fmt: skip
        self.upstream = upstream

    async def find(
        self,
        response_id: str,
        candidates: Sequence[tuple[str, ssl.SSLContext | None]],
        auth: str = "",
    ) -> Found:
        """Ask ``candidates`` (address, TLS) where ``response_id`` is kept. ``auth``: header lines (each
        ending CRLF) sent with each ask (the client's key), and what a shared round is keyed by."""
        tls = dict(candidates)
        path = "/v1/responses/" + quote(response_id, safe="")

        async def ask(address: str, due: float) -> int | None:
            return await self._ask(address, tls[address], path, auth, due)

        return await self.locate(response_id, auth, [a for a, _ in candidates], ask)

    async def _ask(
        self, address: str, tls: ssl.SSLContext | None, path: str, auth: str, due: float
    ) -> int | None:
        """The answer's status; None for none (a connection error, no answer by ``due``)."""
        head = f"GET {path} HTTP/1.1\r\nhost: {address}\r\n{auth}content-length: 0\r\n\r\n"
        try:
            resp = await self.upstream.request(address, head.encode("utf-8", "surrogateescape"), b"", due,
                                               tls)  # fmt: skip
        except (TimeoutError, OSError):  # (UpstreamError, ReadTimeout, DeadlinePassed among them)
            return None
        try:
            return resp.status
        finally:
            # (the answer's body is not wanted: read when it is all here, so the connection is kept)
            with contextlib.suppress(Exception):
                if resp.read_now() is None:
                    resp.close()
            resp.release()
